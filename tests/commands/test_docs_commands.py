"""Every command line the docs show is exercised, so the docs cannot drift from the code.

Commands are the lines of fenced shell blocks (```, ```bash, ```sh, ```console, ```shell) in README.md and
docs/*.md that start with ``tandem `` or ``make `` (``$ `` prompts stripped, backslash continuations
joined, trailing comments and shell redirections dropped, ``...`` elisions removed). Each is exercised
through the code path the CLI itself takes:

- ``make T``: ``make -n T`` succeeds (the target exists), and the ``tandem`` commands it would run are
  exercised as below (``make run`` / ``make test`` themselves are run by users and CI);
- ``tandem --help`` and ``tandem keys DIR``: run in a subprocess;
- ``tandem run`` / ``serve-policy`` / ``demos`` / ``eval``: ``compose_run`` (``compose_demos``; eval's options
  parsed by its own parser first), then the head and objective blocks are built (a wrong key or value in
  them fails here, not at the learner's first batch), endpoints checked (CURVE keys created where the
  command names a keys_dir), real-robot devices connected on a missing port (the documented error);
- ``tandem learn``: ``compose_learner`` (``--config FILE``: the ```yaml block of the same page whose first
  line is ``# FILE``), its objective built;
- ``tandem pretrain``: ``compose_pretrain``; ``tandem bench/recover/replay/prepare-policy``: the CLI's own parser (bench
  inference: its policy overrides composed); recover and replay run for real in the slow test.

A command that none of these accepts fails the test, unless it is in NOT_COMPOSABLE (with the reason).
The slow test runs a representative subset for real with shortening overrides appended.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGS = {"", "bash", "sh", "console", "shell"}
SHELL_STOPS = {">", ">>", "2>", "2>&1", "&>", "&", "|", "&&", "||", ";", "<"}
MISSING_PORT = "/dev/tandem-docs-test-no-such-port"

#: command (as extracted) -> why it is not composed. Usage synopses hold placeholders, not values.
NOT_COMPOSABLE: dict[str, str] = {
    "tandem eval [run overrides...] [--split unseen|train] [--seeds 0 1 2] [--episodes 30] [--out DIR] [--label NAME] [--with-operator]":
        "usage synopsis; its options are exercised by the eval examples under it",
    "tandem eval --compare DIR DIR [DIR ...] [--out DIR]":
        "usage synopsis; `tandem eval --compare evals/scripted evals/after_1h ...` below it is parsed",
    "tandem study [run overrides...] [--arms base hg_dagger imitate_all shipped] [--seeds 0 1 2 3 4] [--episodes 90] [--updates-per-episode 100] [--curve-every 30] [--curve-episodes 6] [--eval-seeds 0 1 2] [--eval-episodes 15] [--iterations 1] [--realtime] [--out DIR] [--name NAME]":
        "usage synopsis; the tandem study examples in docs/learning.md are composed",
    "tandem demos [overrides]": "usage synopsis; the `tandem demos ...` examples are composed and one is run",
    "tandem pretrain [overrides]": "usage synopsis; the `tandem pretrain ...` examples are composed",
}

#: command -> the bug that makes it fail today. The test asserts it still fails (remove the entry once fixed).
KNOWN_BROKEN: dict[str, str] = {}

#: command -> what its error says: the docs show these failing on purpose (the test asserts they do).
EXPECTED_ERRORS: dict[str, str] = {
    "tandem run policy=scripted robot.task=pick-plcae-v3": "did you mean 'pick-place-v3'?",
}

#: (page, start of the command) of the docs commands the slow test runs for real.
REAL_RUNS = [
    ("README.md", "tandem run policy=scripted robot.task=push-v3"),
    ("README.md", "tandem run head=edit learn.spawn=true"),
    ("docs/reports.md", "tandem eval policy=scripted robot.task=reach-v3"),
    ("README.md", "tandem demos session.episodes=24"),
]
SHORTEN = ["session.episodes=1", "robot.max_episode_steps=20", "robot.realtime=false"]


# -- extraction --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DocCommand:
    """One command line from the docs."""

    page: str  # path relative to the repository
    line: int  # 1-based line of the command's first line
    text: str  # normalised: prompt, comment, redirection and continuation removed
    words: tuple[str, ...]  # shell words, the program first ("tandem" or "make")

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, 1-based line of the first content line, lines) of every fenced block."""
    blocks, lang, start, body = [], None, 0, []
    for i, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)", line)
        if fence and lang is None:
            lang, start, body = fence.group(1).lower(), i + 1, []
        elif fence and lang is not None:
            blocks.append((lang, start, body))
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def shell_words(command: str) -> list[str]:
    """Shell words of one command line, cut at a comment, a redirection or a pipe; ``...`` dropped."""
    words = []
    for word in shlex.split(command, comments=True):
        if word in SHELL_STOPS or word.startswith((">", "2>")):
            break
        if word != "...":
            words.append(word)
    return words


def extract_commands(path: Path) -> list[DocCommand]:
    """Every ``tandem``/``make`` command line in the shell blocks of ``path``."""
    page = str(path.relative_to(REPO))
    found = []
    for lang, start, lines in fenced_blocks(path.read_text()):
        if lang not in SHELL_LANGS:
            continue
        prompted = any(raw.strip().startswith("$ ") for raw in lines)  # then the other lines are output
        pending, first = "", 0
        for offset, raw in enumerate(lines):
            line = raw.strip()
            if not pending:
                first = start + offset
                if prompted and not line.startswith("$ "):
                    continue
                line = line[2:] if line.startswith("$ ") else line
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = pending + line, ""
            if line.startswith(".venv/bin/tandem "):
                line = line[len(".venv/bin/"):]
            if not line.startswith(("tandem ", "make ")) and line not in ("tandem", "make"):
                continue
            if re.match(r"^tandem [\w-]+:", line):
                continue  # program output ("tandem learn: ready ..."), not a command
            words = shell_words(line)
            found.append(DocCommand(page, first, " ".join(words), tuple(words)))
    return found


def all_commands() -> list[DocCommand]:
    return [cmd for path in DOC_FILES for cmd in extract_commands(path)]


COMMANDS = all_commands()


def doc_yaml(page: str, name: str) -> str:
    """The ```yaml block of ``page`` whose first line is ``# <name>`` (a file the page asks you to write)."""
    for lang, _, lines in fenced_blocks((REPO / page).read_text()):
        if lang in ("yaml", "yml") and lines and re.match(rf"#\s*{re.escape(Path(name).name)}\b", lines[0].strip()):
            return "\n".join(lines) + "\n"
    raise AssertionError(f"{page} runs `--config {name}` but holds no ```yaml block starting with `# {Path(name).name}`")


# -- checks shared by the handlers ----------------------------------------------------------------------------
DIMS = (39, 128, 10, 4)  # S, F, H, A: any valid sizes; the blocks' keys and values are what is checked


def build_objective(values: dict, horizon: int = 10) -> None:
    """Build the learner objective of an ``objective``-style block (critic/residual/edit) at test sizes."""
    from tandem.policies.heads.config import Dims
    from tandem.value.objectives.learning import LearningObjective, ObjectiveSpec

    spec = ObjectiveSpec(**{k: values.get(k) or ({} if k != "type" else "critic")
                            for k in ("type", "critic", "head", "critic_objective", "head_objective")})
    LearningObjective(spec).build(Dims(DIMS[0], DIMS[1], horizon, DIMS[3]))


def check_head(cfg: object) -> None:
    """The run's head block: the robot's head (and critic) and the learner objective it implies build."""
    from tandem.policies.heads.build import robot_parts
    from tandem.policies.heads.config import Dims

    head = cfg.head
    if head.type == "none":
        return
    dims = Dims(DIMS[0], DIMS[1], cfg.session.horizon, DIMS[3])
    robot_parts(dataclasses.replace(head, init=""), dims)  # init names a store of the user's: a placeholder here
    build_objective(head.objective_values(), cfg.session.horizon)


def check_endpoint(endpoint: str, keys_dir: str, field: str) -> None:
    """Loopback, or keys that exist (created here, like `tandem keys`), or the documented CURVE refusal."""
    from tandem.protocol.security import LinkSecurityError, check_endpoint, create_keys, is_loopback

    if is_loopback(endpoint):
        return
    if not keys_dir:
        with pytest.raises(LinkSecurityError, match="only opens non-loopback links with CURVE encryption"):
            check_endpoint(endpoint, keys_dir, field)
        return
    assert not Path(keys_dir).is_absolute(), f"use a relative keys_dir in docs examples, not {keys_dir!r}"
    if not Path(keys_dir, "server.key").exists():
        with pytest.raises(LinkSecurityError, match="holds no keys; run `tandem keys"):
            check_endpoint(endpoint, keys_dir, field)
        create_keys(keys_dir)
    check_endpoint(endpoint, keys_dir, field)


def check_devices(cfg: object) -> None:
    """Real-robot devices fail at connect, with the documented message, when their port is not there."""
    from tandem.core.errors import DeviceMissingError
    from tandem.runtime.build import make_robot

    if cfg.robot.type == "lerobot":
        robot = make_robot(dataclasses.replace(cfg.robot, port=MISSING_PORT))
        with pytest.raises(DeviceMissingError, match="lerobot-find-port"):
            robot.connect()
    if cfg.teleop is not None and cfg.teleop.type == "leader":
        from tandem.teleop.leader_arm import LeaderArmTeleop

        arm = LeaderArmTeleop(dataclasses.replace(cfg.teleop, port=MISSING_PORT))
        with pytest.raises(DeviceMissingError, match="lerobot-find-port"):
            arm.connect()


def check_run_config(cfg: object, serving: bool = False) -> None:
    """Everything of a composed RunConfig that can be checked without running it."""
    check_head(cfg)
    if cfg.link.enabled:
        check_endpoint(cfg.link.experience_endpoint, cfg.link.keys_dir, "link.experience endpoint")
    if cfg.session.backend == "remote" and not serving:
        check_endpoint(cfg.policy_link.endpoint, cfg.policy_link.keys_dir, "policy_link.endpoint")
    if serving:
        check_endpoint(cfg.policy_link.bind, cfg.policy_link.keys_dir, "policy_link.bind")
    check_devices(cfg)


# -- handlers: one per program / subcommand ----------------------------------------------------------------
def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tandem.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def exercise(cmd: DocCommand, workdir: Path) -> None:
    """Exercise one docs command; raises (or fails) when the docs and the code disagree."""
    words = list(cmd.words)
    program, args = words[0], words[1:]
    if program == "make":
        assert args, f"{cmd.where}: a bare `make`"
        out = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{cmd.where}: make -n {' '.join(args)}: {out.stderr}"
        for line in out.stdout.splitlines():  # the tandem commands the target runs are exercised too
            words = shell_words(line) if line.strip() else []
            if words and Path(words[0]).name == "tandem" and words[1:]:
                exercise(DocCommand(cmd.page, cmd.line, " ".join(["tandem", *words[1:]]),
                                    ("tandem", *words[1:])), workdir)
        return
    if not args or args[-1] in ("--help", "-h"):
        out = cli(*args, cwd=workdir)
        assert out.returncode == 0 and "usage:" in out.stdout, f"{cmd.where}: {out.stderr[-2000:]}"
        return
    sub, rest = args[0], args[1:]
    handler = HANDLERS.get(sub)
    assert handler is not None, (f"{cmd.where}: no way to exercise `tandem {sub}`; add a handler to "
                                 "tests/commands/test_docs_commands.py or a NOT_COMPOSABLE entry with the reason")
    handler(rest, cmd, workdir)


def do_run(rest: list[str], cmd: DocCommand, workdir: Path) -> None:
    from tandem.runtime.config import compose_run

    check_run_config(compose_run(rest))


def do_serve_policy(rest: list[str], cmd: DocCommand, workdir: Path) -> None:
    from tandem.runtime.config import compose_run

    check_run_config(compose_run(rest), serving=True)


def do_demos(rest: list[str], cmd: DocCommand, workdir: Path) -> None:
    from tandem.commands.demos import compose_demos

    cfg = compose_demos(rest)
    assert cfg.record.enabled and cfg.record.root
    check_run_config(cfg)


def do_eval(rest: list[str], cmd: DocCommand, workdir: Path) -> None:
    from tandem.commands.eval import build_parser, split_overrides
    from tandem.runtime.config import compose_run

    overrides, options = split_overrides(rest)
    args = build_parser().parse_intermixed_args(options)
    overrides += args.overrides
    if args.compare is not None:
        assert not overrides and len(args.compare) >= 2, f"{cmd.where}: --compare takes 2+ directories, no overrides"
        return
    assert args.episodes >= 1 and args.seeds
    check_run_config(compose_run(overrides))


def do_study(rest: list[str], cmd: DocCommand, workdir: Path) -> None:
    """Parse the options; compose every arm's configuration (as tandem study does before running)."""
    from tandem.commands.study import load_arms, parse_args
    from tandem.runtime.config import compose_run

    args = parse_args(rest)
    arms = load_arms()
    for name in args.arms:
        assert name in arms, f"{cmd.where}: no arm {name!r} in configs/study/arms.yaml"
        check_run_config(compose_run([*args.overrides, *arms[name]["overrides"]]))


def do_learn(rest: list[str], cmd: DocCommand, workdir: Path) -> None:
    from tandem.cli import build_parser
    from tandem.runtime.links.config import tcp_endpoint
    from tandem.value.config import compose_learner

    args = build_parser().parse_args(["learn", *rest])
    config_file = None
    if args.config:
        config_file = workdir / Path(args.config).name
        config_file.write_text(doc_yaml(cmd.page, args.config))
    cfg = compose_learner(args.overrides, config_file)
    if cfg.objective.type != "chunk_reward":
        build_objective(dataclasses.asdict(cfg.objective))
    check_endpoint(tcp_endpoint(cfg.host, cfg.experience_port), cfg.keys_dir, "learner.experience endpoint")


def do_pretrain(rest: list[str], cmd: DocCommand, workdir: Path) -> None:
    from tandem.commands.pretrain import compose_pretrain

    compose_pretrain(rest)


def do_keys(rest: list[str], cmd: DocCommand, workdir: Path) -> None:
    from tandem.cli import main

    assert main(["keys", *rest]) == 0, cmd.where  # the console script's entry point, in this process
    directory = workdir / rest[0]
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret", "authorized/client.key"):
        assert (directory / name).is_file(), name


def do_parse_only(rest: list[str], cmd: DocCommand, workdir: Path) -> None:
    """bench / recover / replay: the CLI's own parser (bench inference: its policy overrides composed)."""
    from tandem.cli import build_parser
    from tandem.runtime.config import compose_run

    args = build_parser().parse_args([cmd.words[1], *rest])
    if cmd.words[1] == "bench" and args.what == "inference":
        compose_run(args.overrides)


HANDLERS = {
    "run": do_run, "serve-policy": do_serve_policy, "demos": do_demos, "eval": do_eval, "learn": do_learn,
    "pretrain": do_pretrain, "keys": do_keys, "bench": do_parse_only, "recover": do_parse_only,
    "replay": do_parse_only, "study": do_study, "prepare-policy": do_parse_only,
}


# -- tests ---------------------------------------------------------------------------------------------------
def test_the_docs_hold_commands_and_the_tables_are_current():
    texts = {c.text for c in COMMANDS}
    assert len(COMMANDS) >= 40, [c.text for c in COMMANDS]
    assert {"make run", "make test"} <= texts
    for table in (NOT_COMPOSABLE, KNOWN_BROKEN, EXPECTED_ERRORS):
        stale = sorted(set(table) - texts)
        assert not stale, f"entries no docs command matches any more (remove them): {stale}"
    for page, start in REAL_RUNS:
        assert any(c.page == page and c.text.startswith(start) for c in COMMANDS), f"REAL_RUNS: {page}: {start!r}"


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.where for c in COMMANDS])
def test_docs_command(cmd: DocCommand, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths (keys/, runs/ ...) land in a fresh directory
    if cmd.text in NOT_COMPOSABLE:
        pytest.skip(f"not composable: {NOT_COMPOSABLE[cmd.text]}")
    if cmd.text in EXPECTED_ERRORS:
        with pytest.raises(Exception, match=re.escape(EXPECTED_ERRORS[cmd.text])):
            exercise(cmd, tmp_path)
        return
    if cmd.text in KNOWN_BROKEN:
        try:
            exercise(cmd, tmp_path)
        except (Exception, AssertionError):
            pytest.xfail(KNOWN_BROKEN[cmd.text])
        pytest.fail(f"{cmd.where} works now: remove it from KNOWN_BROKEN ({KNOWN_BROKEN[cmd.text]})")
    exercise(cmd, tmp_path)


def test_real_robot_learner_file_matches_the_robot_head(tmp_path: Path) -> None:
    """docs/real_robot.md: the learner's objective file describes exactly the robot's head block."""
    from tandem.runtime.config import compose_run
    from tandem.value.config import compose_learner

    page = "docs/real_robot.md"
    learns = [c for c in COMMANDS if c.page == page and c.words[1:2] == ("learn",) and "--config" in c.words]
    robots = [c for c in COMMANDS if c.page == page and c.words[1:2] == ("run",) and "link.enabled=true" in c.words]
    assert learns and robots, "real_robot.md runs a learner with --config and a robot with link.enabled=true"
    name = learns[0].words[learns[0].words.index("--config") + 1]
    (tmp_path / "learner.yaml").write_text(doc_yaml(page, name))
    objective = dataclasses.asdict(compose_learner([], tmp_path / "learner.yaml").objective)
    for robot in robots:
        head = compose_run(list(robot.words[2:])).head.objective_values()
        assert {k: objective[k] for k in head} == head, f"{robot.where}: the robot's head differs from {name}"


def test_configuration_reference_lists_every_field() -> None:
    """docs/configuration.md has a row for every field of every config dataclass, in the class's section."""
    from tandem.core import registry
    from tandem.policies.heads.config import Dims

    text = (REPO / "docs" / "configuration.md").read_text()
    sizes = set(Dims._fields) | {"device"}
    classes = {
        "tandem.runtime.config:SessionConfig": set(), "tandem.runtime.control.loop:LoopConfig": set(),
        "tandem.runtime.control.safety:SafetyConfig": set(), "tandem.runtime.control.scheduler:SchedulerConfig": set(),
        "tandem.runtime.inference.client:PolicyLinkConfig": set(), "tandem.runtime.recording.recorder:RecordConfig": set(),
        "tandem.runtime.links.config:LinkConfig": set(), "tandem.policies.heads.config:HeadConfig": set(),
        "tandem.runtime.config:LearnConfig": set(), "tandem.runtime.monitor.live_view:LiveViewConfig": set(),
        "tandem.runtime.monitor.status_line:StatusLineConfig": set(), "tandem.value.config:LearnerConfig": set(),
        "tandem.value.replay:ReplayConfig": set(), "tandem.value.objectives.base:ObjectiveConfig": set(),
        "tandem.policies.heads.critic:CriticConfig": sizes, "tandem.policies.heads.networks:ResidualHeadConfig": sizes,
        "tandem.policies.heads.networks:EditHeadConfig": sizes, "tandem.value.objectives.critic:CriticObjectiveConfig": set(),
        "tandem.value.objectives.residual:ResidualObjectiveConfig": set(), "tandem.value.objectives.edit:EditObjectiveConfig": set(),
        "tandem.commands.pretrain:PretrainConfig": set(), "tandem.policies.tiny_vla.model:TinyVLAModelConfig": set(),
    }
    for table in registry.GROUPS.values():
        for config_path, _ in table.values():
            classes[config_path] = set()
    missing = []
    for path, skip in classes.items():
        cls = registry.load(path)
        sections = re.findall(rf"^#+ [^\n]*`{cls.__name__}`[^\n]*\n(.*?)(?=^#+ |\Z)", text, re.M | re.S)
        assert sections, f"configuration.md has no section naming `{cls.__name__}`"
        body = "\n".join(sections)
        for f in dataclasses.fields(cls):
            if f.name not in skip and not re.search(rf"^\| (?:[\w, ]*\b)?{f.name}\b[\w, ]* \|", body, re.M):
                missing.append(f"{cls.__name__}.{f.name}")
    assert not missing, f"docs/configuration.md lacks rows for {missing}"


def test_troubleshooting_quotes_the_real_messages(tmp_path: Path) -> None:
    """The errors docs/troubleshooting.md quotes are the ones the code raises (generated here, then looked up)."""
    from tandem.core.errors import DeviceMissingError
    from tandem.hardware.lerobot_robot import LeRobotRobot, LeRobotRobotConfig
    from tandem.protocol.security import LinkSecurityError, check_endpoint
    from tandem.teleop.leader_arm import LeaderArmConfig, LeaderArmTeleop

    text = " ".join((REPO / "docs" / "troubleshooting.md").read_text().split())
    messages = []
    for keys_dir in ("", str(tmp_path / "nokeys")):
        with pytest.raises(LinkSecurityError) as err:
            check_endpoint("tcp://0.0.0.0:5560", keys_dir, "learner.experience endpoint (host=0.0.0.0)")
        messages.append(str(err.value))
    with pytest.raises(DeviceMissingError) as err:
        LeRobotRobot(LeRobotRobotConfig(port=MISSING_PORT)).connect()
    messages.append(str(err.value))
    with pytest.raises(DeviceMissingError) as err:
        LeaderArmTeleop(LeaderArmConfig(port=MISSING_PORT, events="none")).connect()
    messages.append(str(err.value))
    for message in messages:
        stable = message.replace(MISSING_PORT, "/dev/ttyACM0").replace(str(tmp_path / "nokeys"), "keys")
        # the part after the field and value names the fix; that is what the page must quote
        tail = stable.split(": ", 1)[1] if ": " in stable else stable
        assert " ".join(tail.split()) in text, f"docs/troubleshooting.md does not quote: {tail}"


# -- slow: a representative subset, for real ------------------------------------------------------------------
def _find(page: str, start: str) -> DocCommand:
    return next(c for c in COMMANDS if c.page == page and c.text.startswith(start))


def _tandem(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "tandem.cli", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, f"tandem {' '.join(args)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.slow
def test_representative_docs_commands_run(tmp_path: Path) -> None:
    import json

    for page, start in REAL_RUNS:
        cmd = _find(page, start)
        sub, rest = cmd.words[1], list(cmd.words[2:])
        if sub == "eval":
            out = tmp_path / "eval"
            _tandem(["eval", *rest, *SHORTEN[1:], "--seeds", "0", "--episodes", "1", "--out", str(out)], REPO)
            assert json.loads((out / "eval.json").read_text())["results"][0]["episodes"]
        elif sub == "demos":
            root = tmp_path / "demos"
            _tandem(["demos", *rest, *SHORTEN, f"record.root={root}", f"session.run_dir={tmp_path / 'demos_run'}"],
                    REPO)
            # the recover and replay commands of docs/recording.md, on this dataset
            recover = _find("docs/recording.md", "tandem recover")
            assert json.loads(_tandem([*recover.words[1:-1], str(root)], REPO).stdout)["episodes"] == 1
            replay = _find("docs/recording.md", "tandem replay")
            args = [str(root) if w == replay.words[2] else w for w in replay.words[1:]]
            assert json.loads(_tandem(args, REPO).stdout)["chunk_records"] >= 1
        else:
            run_dir = tmp_path / f"run_{len(list(tmp_path.iterdir()))}"
            out = _tandem([sub, *rest, *SHORTEN, f"session.run_dir={run_dir}"], REPO)
            assert "success rate" in out.stdout
            assert json.loads((run_dir / "summary.json").read_text())["episodes"]
