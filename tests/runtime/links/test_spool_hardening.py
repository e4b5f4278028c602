"""Issue #24, part B: the robot's spool under sharing, damage and a full disk; the replay log under damage.

A full disk is simulated at the lowest write call (``faults_testkit.DiskFull`` replaces ``os.write`` for
the files below one directory); learners are real ``LinkServer`` + ``ReplayStore`` threads on 127.0.0.1.
"""

from __future__ import annotations

import os

import pytest
from faults_testkit import DiskFull
from links_testkit import free_port, make_record, wait_for

from tandem.core.durable_log import DurableLog
from tandem.core.errors import ConfigError
from tandem.protocol.messages import record_to_message
from tandem.protocol.wire import decode, encode, pack_frames
from tandem.runtime.links.config import LinkConfig
from tandem.runtime.links.experience import ExperienceLink
from tandem.runtime.links.spool import RecordSpool
from tandem.value.replay import GAP, STORED, ReplayStore, record_entries
from tandem.value.server import LinkServer, ServerConfig


def stored_keys(directory) -> list[tuple[str, int, int]]:
    return [rec.key for _, rec in record_entries(directory) if rec is not None]


def learner(tmp_path):
    store = ReplayStore(tmp_path / "replay")
    server = LinkServer(ServerConfig(experience_port=0, weights_port=0), store).start()
    return store, server


def link_config(server: LinkServer, spool, **kw) -> LinkConfig:
    return LinkConfig(robot_id="robot0", experience_port=server.experience_port, weights_port=server.weights_port,
                      spool_dir=str(spool), **kw)


# ---------------------------------------------------------------------------------------------- defect 2


def test_a_second_session_on_the_same_spool_is_refused_and_names_the_spool(tmp_path):
    """Defect 2: two sessions with the same robot id (same spool) used to interleave the same seqs and
    both report everything acked; the second is now refused with a config error that says what to do."""
    store, server = learner(tmp_path)
    cfg = link_config(server, tmp_path / "spool")
    first = ExperienceLink(cfg).start()
    try:
        with pytest.raises(ConfigError) as info:
            ExperienceLink(cfg).start()
        text = str(info.value)
        assert str(tmp_path / "spool") in text and "in use by another session" in text
        assert f"pid {os.getpid()}" in text and "link.robot_id" in text and "link.spool_dir" in text
        for i in range(30):
            first.send(make_record("robot0", 0, i))
        assert first.wait_acked(10)
    finally:
        first.close(0)
        server.stop()
        store.close()
    assert stored_keys(tmp_path / "replay") == [("robot0", 0, i) for i in range(30)]


def test_sequence_numbers_continue_across_sessions_after_acked_segments_are_deleted(tmp_path):
    """A later session on the spool never reuses a seq of an earlier one, also when every segment of the
    earlier one was acked and deleted: the learner stores both sessions' records, none as a duplicate."""
    store, server = learner(tmp_path)
    cfg = link_config(server, tmp_path / "spool")
    try:
        for session in range(3):
            link = ExperienceLink(cfg).start()
            for i in range(25):
                link.send(make_record("robot0", session, i))
            assert link.wait_acked(10)
            assert link.close(1.0)
            assert link.stats.acked == 25 * (session + 1)
        assert server.stats["duplicates"] == 0
    finally:
        server.stop()
        store.close()
    assert stored_keys(tmp_path / "replay") == [("robot0", s, i) for s in range(3) for i in range(25)]


def test_the_spool_lock_is_released_when_a_session_ends(tmp_path):
    spool = RecordSpool(tmp_path / "spool", "robot0")
    spool.close()
    again = RecordSpool(tmp_path / "spool", "robot0")  # no error: the lock went with the first session
    again.close()


# ---------------------------------------------------------------------------------------------- defect 3


def _flip_bit(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))


def _record_message(robot: str, seq: int, stream: str = "s1"):
    return decode([bytes(f) for f in encode(record_to_message(make_record(robot, 0, seq), seq, stream))], copy=True)


def test_durable_log_skips_damage_mid_file_and_truncates_only_a_torn_tail(tmp_path):
    log = DurableLog(tmp_path)
    list(log.scan())
    where = {i: log.append(i, bytes([i]) * 100) for i in range(1, 11)}
    log.close()
    path = log.path(0)
    size = path.stat().st_size
    _flip_bit(path, where[4][1] + 40)  # inside entry 4's payload
    _flip_bit(path, where[7][1] + 1)  # entry 7's magic
    with open(path, "ab") as f:  # and a write cut short by a kill
        f.write(b"MDNT\x64\x00\x00\x00torn")
    again = DurableLog(tmp_path)
    keys = [k for _, _, k, _ in again.scan()]
    assert keys == [1, 2, 3, 5, 6, 8, 9, 10]
    assert again.corrupt_entries == 2 and again.corrupt_bytes == 2 * (20 + 100)
    assert path.stat().st_size == size and again.truncated_bytes == 12  # only the torn tail was cut
    assert (tmp_path / f"{path.name}.torn-{size}").read_bytes() == b"MDNT\x64\x00\x00\x00torn"
    again.append(11, b"x")
    again.close()
    assert [k for _, _, k, _ in DurableLog(tmp_path).scan()] == [1, 2, 3, 5, 6, 8, 9, 10, 11]


def test_a_flipped_bit_in_the_replay_log_loses_one_record_not_the_stream(tmp_path):
    """Defect 3: a bad record mid-log used to truncate every later (acked) record, and the robot's stream
    was then refused forever as a gap. Now the one record is skipped and counted; the rest stay."""
    store = ReplayStore(tmp_path)
    for seq in range(1, 21):
        assert store.offer(_record_message("a", seq)) == STORED
    store.close()
    log = DurableLog(tmp_path / "log")
    offsets = [off for _, off, _, _ in log.scan(repair=False)]
    _flip_bit(log.path(0), offsets[9] + 200)  # the payload of seq 10
    size = log.path(0).stat().st_size
    again = ReplayStore(tmp_path)
    try:
        assert again.counts["corrupt"] == 1 and again.counts["stored"] == 19
        assert log.path(0).stat().st_size == size  # nothing truncated
        assert again.last_seq("a", "s1") == 20
        assert again.offer(_record_message("a", 21)) == STORED  # the stream goes on
        assert again.offer(_record_message("a", 23)) == GAP
    finally:
        again.close()
    assert [m.seq for m, _ in record_entries(tmp_path)] == [s for s in range(1, 22) if s != 10]


def test_a_damaged_spool_record_is_skipped_by_the_learner_and_the_stream_goes_on(tmp_path):
    """An unacked record whose spool entry is damaged is sent as a placeholder: the learner tombstones its
    seq (refused, counted), and every later record is stored instead of the stream stalling on a gap."""
    spool_dir = tmp_path / "spool"
    spool = RecordSpool(spool_dir, "robot0")
    for i in range(10):
        seq = spool.next_seq
        spool.append(seq, pack_frames(encode(record_to_message(make_record("robot0", 0, i), seq, spool.stream))))
    spool.sync(True)
    offsets = {seq: where[1] for seq, where in spool._index.items()}
    spool.close()
    _flip_bit(spool_dir / "log" / "seg-00000000.log", offsets[4] + 100)
    store, server = learner(tmp_path)
    link = ExperienceLink(link_config(server, spool_dir)).start()
    try:
        link.send(make_record("robot0", 1, 0))
        assert link.wait_acked(10), link.stats
        assert link.stats.damaged == 1
        assert server.stats["rejected"] == 1
    finally:
        link.close(0)
        server.stop()
        store.close()
    keys = stored_keys(tmp_path / "replay")
    assert keys == [("robot0", 0, i) for i in range(10) if i != 3] + [("robot0", 1, 0)]


# ---------------------------------------------------------------------------------------------- defect 4


def test_a_failed_write_leaves_no_half_entry_and_is_retried(tmp_path):
    log = DurableLog(tmp_path)
    list(log.scan())
    log.append(1, b"a" * 100)
    log.sync()
    with DiskFull(tmp_path, partial=30) as disk:
        disk.full = True
        log.append(2, b"b" * 100)
        with pytest.raises(OSError):
            log.sync()
        assert log.path(0).stat().st_size == 120  # the partial write was undone
        disk.full = False
        log.sync()  # the buffered entry is written once the disk takes writes again
    log.close()
    assert [k for _, _, k, _ in DurableLog(tmp_path).scan()] == [1, 2]


def test_a_full_disk_pauses_spooling_and_every_record_arrives_once_space_returns(tmp_path):
    """Defect 4: a full disk used to kill the experience link's I/O thread (records queued after it were
    lost). Now spooling pauses, records wait in memory, and all of them are spooled and acked later."""
    store, server = learner(tmp_path)
    spool = tmp_path / "spool"
    link = ExperienceLink(link_config(server, spool)).start()
    sent = []
    try:
        with DiskFull(spool, partial=500) as disk:
            for i in range(20):
                link.send(make_record("robot0", 0, i))
                sent.append(("robot0", 0, i))
            assert link.wait_acked(10)
            disk.full = True
            for i in range(20, 200):
                link.send(make_record("robot0", 0, i))
                sent.append(("robot0", 0, i))
            assert wait_for(lambda: link.stats.spool_paused and link.stats.held == 180, 5), link.stats
            assert link._thread.is_alive() and link.stats.spooled == 20 and disk.failures > 0
            disk.full = False
            assert link.wait_acked(10), link.stats
        s = link.stats
        assert not s.spool_paused and s.spool_pauses >= 1 and any("No space left" in e for e in s.spool_errors)
        assert s.spooled == 200 and s.lost == 0 and s.held == 0 and s.acked == 200
    finally:
        link.close(0)
        server.stop()
        store.close()
    assert stored_keys(tmp_path / "replay") == sent


def test_records_beyond_what_memory_holds_are_counted_lost_exactly(tmp_path):
    store, server = learner(tmp_path)
    spool = tmp_path / "spool"
    link = ExperienceLink(link_config(server, spool))
    link.max_held = 50
    link.start()
    try:
        with DiskFull(spool) as disk:
            disk.full = True
            for i in range(120):
                link.send(make_record("robot0", 0, i))
            assert wait_for(lambda: link.stats.held + link.stats.lost == 120, 5), link.stats
            disk.full = False
            assert link.wait_acked(10), link.stats
        s = link.stats
        assert s.lost == 70 and s.lost_ticks == 700 and s.spooled == 50 and s.queued == s.spooled + s.lost
    finally:
        link.close(0)
        server.stop()
        store.close()
    assert stored_keys(tmp_path / "replay") == [("robot0", 0, i) for i in range(50)]


def test_an_unwritable_spool_directory_is_a_config_error(tmp_path):
    """Defect 8: an unwritable spool used to end in a traceback; now a config error naming link.spool_dir."""
    if os.geteuid() == 0:
        blocked = tmp_path / "file"  # root writes anywhere: a spool "directory" that is a file fails the same way
        blocked.write_text("")
        spool = blocked / "spool"
    else:
        blocked = tmp_path / "ro"
        blocked.mkdir(mode=0o500)
        spool = blocked / "spool"
    cfg = LinkConfig(robot_id="robot0", experience_port=free_port(), weights_port=free_port(), spool_dir=str(spool))
    with pytest.raises(ConfigError, match="link.spool_dir=.*cannot be written"):
        ExperienceLink(cfg).start()
