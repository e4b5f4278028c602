"""``tandem keys``, ``tandem learn`` refusals, ``tandem bench links`` and error reporting through the CLI entry point."""

from __future__ import annotations

import json

from tandem.cli import main


def test_keys_command(tmp_path, capsys):
    assert main(["keys", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "server.key_secret").exists() and (tmp_path / "k" / "authorized" / "client.key").exists()
    assert main(["keys", str(tmp_path / "k")]) == 2  # refuses to overwrite without --force
    assert "already holds keys" in capsys.readouterr().err
    assert main(["keys", str(tmp_path / "k"), "--force"]) == 0


def test_learn_refuses_a_public_address_without_keys(tmp_path, capsys):
    assert main(["learn", "learner.host=0.0.0.0", f"learner.store_dir={tmp_path}"]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert not (tmp_path / "replay").exists()


def test_bench_links_prints_json(capsys):
    assert main(["bench", "links", "--pushes", "3", "--records", "300"]) == 0
    out = json.loads(capsys.readouterr().out)
    w = out["weights"]
    assert 0.9e6 < w["params"] < 1.1e6
    assert w["tandem"]["received"] == 3 and w["tandem"]["weights_equal"] and w["lerobot_grpc"]["received"] == 3
    assert w["tandem"]["publish_to_applied"]["p50_ms"] > 0 and w["lerobot_over_tandem_p50"] > 0
    assert w["transport_floor"]["received"] == 3 and w["transport_floor"]["send_to_received"]["p50_ms"] > 0
    assert w["tandem"]["process_cpu_ms_per_push"] > 0 and w["lerobot_grpc"]["process_cpu_ms_per_push"] > 0
    assert out["experience"]["all_acked"] and out["experience"]["stored"] == 300 and out["experience"]["steps_per_s"] > 0


def test_tandem_errors_end_in_a_message_not_a_traceback(monkeypatch, capsys):
    from tandem.commands import run
    from tandem.hardware.lerobot_robot import CalibrationError

    def uncalibrated(args):
        raise CalibrationError("so101_follower id='arm' has no calibration file; run lerobot-calibrate")

    monkeypatch.setattr(run, "main", uncalibrated)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "tandem: CalibrationError: " in err and "lerobot-calibrate" in err and "Traceback" not in err
