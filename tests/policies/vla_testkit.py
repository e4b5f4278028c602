"""Tiny lerobot VLA directories built here, nothing downloaded: a word-level tokenizer, a tiny SmolVLM
config and processor, a random-weight SmolVLA saved with lerobot's own save_pretrained, pi0/pi0.5 configs
and processors; and a hub cache laid out as huggingface_hub lays it out, to prepare directories from.

The saved directories name their backbone by a hub id, as a real checkpoint does (SmolVLA's
``vlm_model_name``, the tokenizer step's ``tokenizer_name``), so loading them by name fails offline
unless ``DIR/backbone/`` holds its files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch

STATE, IMAGE = "observation.state", "observation.images.corner"
SMOLVLM_NAME = "tandem-test/tiny-smolvlm"  # the hub id the tiny SmolVLA names (in no cache but ours)
PALIGEMMA_NAME = "google/paligemma-3b-pt-224"  # what lerobot's pi0/pi0.5 processors name, hardcoded
SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>",
           "<image>", "<video>", "<bos>", "<eos>"]
WORDS = "push pick place reach open close the a puck goal block drawer door to and on".split()
VOCAB = {t: i for i, t in enumerate(SPECIAL + WORDS)}
TEXT_HIDDEN = 64  # F of the SmolVLA prefix embedding


def save_tokenizer(out: Path) -> Path:
    """A word-level fast tokenizer over :data:`VOCAB` with SmolVLM's image special tokens, saved in ``out``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
                              "image_token": "<image>", "end_of_utterance_token": "<end_of_utterance>"})
    fast.save_pretrained(out)
    return out


def save_smolvlm_backbone(out: Path) -> Path:
    """A tiny SmolVLM: config (2 text layers of 64, 1 vision layer of 32 on 64x64 images) + processor +
    tokenizer, the files SmolVLA asks transformers for. Weights are not needed (the policy has them)."""
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    save_tokenizer(out)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 64},
                                              do_image_splitting=False),
        tokenizer=tokenizer, video_processor=SmolVLMVideoProcessor(), image_seq_len=4,
    ).save_pretrained(out)
    SmolVLMConfig(
        text_config={"model_type": "llama", "hidden_size": TEXT_HIDDEN, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "vocab_size": len(VOCAB), "max_position_embeddings": 256},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 64, "patch_size": 16},
        scale_factor=2, image_token_id=VOCAB["<image>"], vocab_size=len(VOCAB),
    ).save_pretrained(out)
    return out


def _features(action_dim: int = 4) -> tuple[dict, dict]:
    from lerobot.configs.types import FeatureType, PolicyFeature

    return ({STATE: PolicyFeature(FeatureType.STATE, (39,)), IMAGE: PolicyFeature(FeatureType.VISUAL, (3, 96, 96))},
            {"action": PolicyFeature(FeatureType.ACTION, (action_dim,))})


def _stats(action_dim: int = 4) -> dict:
    def s(shape, mean, std):
        return {"mean": torch.full(shape, mean), "std": torch.full(shape, std),
                "min": torch.full(shape, mean - 2 * std), "max": torch.full(shape, mean + 2 * std),
                "q01": torch.full(shape, mean - 2 * std), "q99": torch.full(shape, mean + 2 * std)}  # pi0.5

    return {STATE: s((39,), 0.2, 0.5), "action": s((action_dim,), 0.0, 0.5), IMAGE: s((3, 1, 1), 0.5, 0.25)}


def _rename_backbone(root: Path, local: Path, name: str) -> None:
    """Replace the local backbone path in ``root``'s config and preprocessor files by the hub id ``name``."""
    for fname in ("config.json", "policy_preprocessor.json"):
        path = root / fname
        path.write_text(path.read_text().replace(json.dumps(str(local))[1:-1], name))


def save_tiny_smolvla(root: Path, with_backbone: bool = True) -> Path:
    """A random-weight SmolVLA (221k parameters, P=12, A=4) saved with lerobot into ``root``, naming its
    VLM :data:`SMOLVLM_NAME`; ``root/backbone/`` holds the tiny SmolVLM's files when ``with_backbone``."""
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    root.mkdir(parents=True, exist_ok=True)
    backbone = save_smolvlm_backbone(root / "backbone")
    inputs, outputs = _features()
    cfg = SmolVLAConfig(input_features=inputs, output_features=outputs, vlm_model_name=str(backbone),
                        chunk_size=12, n_action_steps=12, resize_imgs_with_padding=(64, 64), num_vlm_layers=2,
                        num_steps=2, tokenizer_max_length=16, max_state_dim=40, max_action_dim=8, device="cpu")
    torch.manual_seed(0)
    policy = get_policy_class("smolvla")(cfg)
    pre, post = make_pre_post_processors(cfg, dataset_stats=_stats())
    for obj in (policy, pre, post):
        obj.save_pretrained(root)
    _rename_backbone(root, backbone, SMOLVLM_NAME)
    if not with_backbone:
        shutil.rmtree(backbone)
    return root


def save_pi_config(kind: str, root: Path, with_backbone: bool = True) -> Path:
    """A pi0 or pi0.5 (``kind``) config.json and lerobot's own pre/post-processors in ``root``, the tokenizer
    step naming :data:`PALIGEMMA_NAME` as lerobot writes it; ``root/backbone/`` holds a tiny tokenizer
    when ``with_backbone``. No weights: lerobot builds pi0 only at PaliGemma sizes (gemma_300m/2b)."""
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.processor import tokenizer_processor
    from transformers import AutoTokenizer

    if kind == "pi0":
        from lerobot.policies.pi0.configuration_pi0 import PI0Config as Config
    else:
        from lerobot.policies.pi05.configuration_pi05 import PI05Config as Config
    root.mkdir(parents=True, exist_ok=True)
    backbone = save_tokenizer(root / "backbone")
    inputs, outputs = _features()
    cfg = Config(input_features=inputs, output_features=outputs, chunk_size=12, n_action_steps=12,
                 tokenizer_max_length=8, paligemma_variant="gemma_300m", device="cpu")
    # lerobot's processor factory loads the tokenizer by its hardcoded hub name: hand it the local one
    local = SimpleNamespace(from_pretrained=lambda name, **kw: AutoTokenizer.from_pretrained(str(backbone), **kw))
    original = tokenizer_processor.AutoTokenizer
    tokenizer_processor.AutoTokenizer = local
    try:
        pre, post = make_pre_post_processors(cfg, dataset_stats=_stats())
    finally:
        tokenizer_processor.AutoTokenizer = original
    cfg._save_pretrained(root)
    for obj in (pre, post):
        obj.save_pretrained(root)
    if not with_backbone:
        shutil.rmtree(backbone)
    return root


def add_to_hub_cache(cache: Path, repo_id: str, files: Path, revision: str = "0" * 40) -> Path:
    """Lay ``files`` (a directory) out as huggingface_hub's cache holds repository ``repo_id`` at commit
    ``revision``: ``models--org--name/refs/main`` and ``snapshots/<revision>/``. Returns the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    shutil.copytree(files, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
