"""``tandem bench links``: weight push latency, experience throughput, and lerobot's gRPC transport.

Three measurements in one process, all on 127.0.0.1 (the first with its transport floor beside it):

1. Weight push: a ~1M-parameter torch MLP head, from ``state_dict`` on the learner to the new module
   swapped in on the robot. The clock starts before the tensors are converted to numpy and stops
   when :meth:`WeightsSubscriber.apply_staged` has swapped the module in, on a thread standing in for
   the control loop that reaches a chunk boundary as soon as a set is staged (the wait for a real
   boundary, up to H ticks, is a property of the loop, not the link, and is excluded). Beside it, the
   transport floor: the same frames through a bare pyzmq PUB -> SUB on loopback (zero-copy send,
   zero-copy receive, nothing checked), pushed as often, so the link's own cost is the difference.
2. The same state_dict pushed through lerobot 0.4.4's own actor-learner transport: a real gRPC
   server running lerobot's ``LearnerService`` servicer (``StreamParameters``, 2 MiB pieces via
   ``send_bytes_in_chunks``), a client draining the stream with ``receive_bytes_in_chunks``, then
   ``bytes_to_state_dict`` + ``load_state_dict`` as lerobot's actor does. The clock starts before
   ``state_to_bytes``; lerobot's actor would apply it only at episode end, which is excluded too.
3. Experience: ChunkRecords (H=10, A=4, S=39) through ExperienceLink -> LinkServer -> ReplayStore
   (spooled, fsync-batched, acked); steps/s = records x H / time until the last ack.

Each weight figure comes with ``process_cpu_ms_per_push``: the CPU time of the whole bench process (both
ends, every thread, the 20 ms pause before each push included) over the timed pushes, per push; the
tandem push also splits it by thread (``thread_cpu_ms_per_push``, Linux: publishing caller
``MainThread``, ``learner-links`` I/O thread, pyzmq's ``ZMQbg/IO/0`` socket I/O of both ends,
``weights-bench`` receiver, ``weights-hash-bench_0`` digest, ``bench-boundaries`` swap). On a machine
shared with other work, latency follows it: a push waits for CPU as long as it needs CPU.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tandem.protocol.chunk_record import ChunkRecord
from tandem.runtime.control.timing import percentile
from tandem.runtime.links.config import LinkConfig
from tandem.runtime.links.experience import ExperienceLink
from tandem.value.objectives.chunk_reward import mlp
from tandem.value.replay import ReplayConfig, ReplayStore
from tandem.value.server import LinkServer, ServerConfig


def head_mlp(seed: int = 0) -> Any:
    """A ~1.02M-parameter MLP head: 96 -> 960 -> 960 -> 4."""
    torch.manual_seed(seed)
    return mlp(96, 960, 2, 4)


def _stats(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3), "max_ms": round(max(ms), 3)}


def _thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of each thread of this process by native id, with its kernel name
    (Linux ``/proc``; empty elsewhere)."""
    out: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _cpu_by_thread(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                   pushes: int) -> dict[str, float]:
    """ms of CPU per push by thread name (Python's name where it has one), threads that used any."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid, (comm, seconds) in after.items():
        used = seconds - before.get(tid, (comm, 0.0))[1]
        if used > 0:
            name = names.get(tid, comm)
            out[name] = round(out.get(name, 0.0) + used * 1e3 / max(pushes, 1), 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _boundary_thread(apply: Any, staged: threading.Event, stop: threading.Event) -> threading.Thread:
    """Stands in for the control loop: reaches a chunk boundary as soon as a set is staged (the
    subscriber calls ``on_staged`` once the set is staged, so the boundary finds it)."""

    def run() -> None:
        while not stop.is_set():
            if staged.wait(0.05):
                staged.clear()
                apply(0)

    t = threading.Thread(target=run, name="bench-boundaries", daemon=True)
    t.start()
    return t


def bench_weights_tandem(model: Any, pushes: int) -> dict[str, Any]:
    """Publish -> applied latency of ``model``'s weights over the tandem weights link."""
    from tandem.runtime.links.weights import TorchModuleWeights, WeightsSubscriber

    server = LinkServer(ServerConfig(experience_port=0, weights_port=0), store=None).start()
    cfg = LinkConfig(robot_id="bench", experience_port=server.experience_port, weights_port=server.weights_port)
    consumer = TorchModuleWeights(head_mlp(seed=1))
    staged: dict[int, float] = {}
    applied: dict[int, float] = {}
    staged_event, applied_event = threading.Event(), threading.Event()

    def on_staged(kind: str, version: int) -> None:
        staged[version] = time.perf_counter()
        staged_event.set()

    def on_applied(kind: str, version: int) -> None:
        applied[version] = time.perf_counter()
        applied_event.set()

    sub = WeightsSubscriber(cfg, {"head": consumer}, on_staged=on_staged, on_applied=on_applied).start()
    stop = threading.Event()
    boundary = _boundary_thread(sub.apply_staged, staged_event, stop)
    to_applied, to_staged, publish_call = [], [], []
    try:
        version = 0
        deadline = time.monotonic() + 10
        while not applied and time.monotonic() < deadline:  # warm up: wait for the subscription
            version += 1
            server.publish("head", {k: v.detach().numpy() for k, v in model.state_dict().items()}, version, "bench")
            time.sleep(0.1)
        if not applied:
            raise RuntimeError("the weights subscriber never received the warm-up push")
        threads0, cpu0 = _thread_cpu(), time.process_time()
        for _ in range(pushes):
            version += 1
            time.sleep(0.02)
            applied_event.clear()
            t0 = time.perf_counter()
            arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
            server.publish("head", arrays, version, "bench")
            publish_call.append(time.perf_counter() - t0)
            end = time.monotonic() + 5
            while version not in applied and time.monotonic() < end:  # woken by on_applied: no polling
                applied_event.wait(0.05)
                applied_event.clear()
            if version in applied:
                to_applied.append(applied[version] - t0)
                to_staged.append(staged[version] - t0)
        cpu, by_thread = time.process_time() - cpu0, _cpu_by_thread(threads0, _thread_cpu(), pushes)
        ok = all(
            np.array_equal(a.detach().numpy(), b.detach().numpy())
            for a, b in zip(consumer.module.state_dict().values(), model.state_dict().values(), strict=True)
        )
    finally:
        stop.set()
        boundary.join()
        sub.close()
        server.stop()
    return {
        "pushes": pushes,
        "received": len(to_applied),
        "process_cpu_ms_per_push": round(cpu * 1e3 / max(pushes, 1), 3),
        "thread_cpu_ms_per_push": by_thread,
        "publish_call": _stats(publish_call) if publish_call else {},
        "publish_to_staged": _stats(to_staged) if to_staged else {},
        "publish_to_applied": _stats(to_applied) if to_applied else {},
        "weights_equal": bool(ok),
        "rejected": sub.stats.rejected,
    }


def bench_transport_floor(model: Any, pushes: int) -> dict[str, Any]:
    """Send -> received latency of the weights message's frames through a bare pyzmq PUB -> SUB on
    127.0.0.1: what any zmq link pays to move these bytes on this machine (nothing encoded, checked or
    copied by Python; zero-copy on both ends)."""
    import zmq

    from tandem.protocol.messages import weights_message
    from tandem.protocol.wire import encode

    frames = encode(weights_message("head", {k: v.detach().numpy() for k, v in model.state_dict().items()}, 1, "floor"))
    context = zmq.Context()
    pub, sub = context.socket(zmq.PUB), context.socket(zmq.SUB)
    latencies = []
    try:
        for sock in (pub, sub):
            sock.setsockopt(zmq.LINGER, 0)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://127.0.0.1:{port}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # warm up: wait for the subscription
            pub.send_multipart(frames, copy=False)
            if sub.poll(100):
                sub.recv_multipart(copy=False)
                break
        else:
            raise RuntimeError("tandem: the transport-floor subscriber never received the warm-up message")
        while sub.poll(50):  # drain the warm-up backlog
            sub.recv_multipart(copy=False)
        cpu0 = time.process_time()
        for _ in range(pushes):
            time.sleep(0.02)
            t0 = time.perf_counter()
            pub.send_multipart(frames, copy=False)
            if sub.poll(5000):
                sub.recv_multipart(copy=False)
                latencies.append(time.perf_counter() - t0)
        cpu = time.process_time() - cpu0
    finally:
        pub.close(0)
        sub.close(0)
        context.term()
    return {"pushes": pushes, "received": len(latencies), "send_to_received": _stats(latencies) if latencies else {},
            "process_cpu_ms_per_push": round(cpu * 1e3 / max(pushes, 1), 3),
            "transport": "pyzmq PUB -> SUB, tcp://127.0.0.1, zero-copy send and receive, nothing checked"}


def bench_weights_lerobot(model: Any, pushes: int) -> dict[str, Any]:
    """Publish -> applied latency of ``model``'s weights over lerobot's gRPC LearnerService."""
    from concurrent import futures

    import grpc
    from lerobot.rl.learner_service import LearnerService
    from lerobot.transport import services_pb2, services_pb2_grpc
    from lerobot.transport.utils import (
        MAX_MESSAGE_SIZE,
        bytes_to_state_dict,
        grpc_channel_options,
        receive_bytes_in_chunks,
        state_to_bytes,
    )

    shutdown = threading.Event()
    params_q: queue.Queue = queue.Queue()
    servicer = LearnerService(
        shutdown_event=shutdown, parameters_queue=params_q, seconds_between_pushes=0.0,
        transition_queue=queue.Queue(), interaction_message_queue=queue.Queue(), queue_get_timeout=0.001,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=3),
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_SIZE), ("grpc.max_send_message_length", MAX_MESSAGE_SIZE)],
    )
    services_pb2_grpc.add_LearnerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=grpc_channel_options())
    stub = services_pb2_grpc.LearnerServiceStub(channel)
    stub.Ready(services_pb2.Empty(), timeout=10)
    received: queue.Queue = queue.Queue()
    actor_model = head_mlp(seed=1)
    applied: list[float] = []
    applied_event = threading.Event()

    def receiver() -> None:
        try:
            receive_bytes_in_chunks(stub.StreamParameters(services_pb2.Empty()), received, shutdown, log_prefix="[bench]")
        except grpc.RpcError:
            pass

    def actor() -> None:  # what lerobot's actor does with new parameters
        while not shutdown.is_set():
            try:
                blob = received.get(timeout=0.05)
            except queue.Empty:
                continue
            actor_model.load_state_dict(bytes_to_state_dict(blob))
            applied.append(time.perf_counter())
            applied_event.set()

    threads = [threading.Thread(target=receiver, daemon=True), threading.Thread(target=actor, daemon=True)]
    for t in threads:
        t.start()
    latencies = []
    try:
        params_q.put(state_to_bytes(model.state_dict()))  # warm up the stream
        end = time.monotonic() + 10
        while not applied and time.monotonic() < end:
            time.sleep(0.01)
        cpu0 = time.process_time()
        for _ in range(pushes):
            time.sleep(0.02)
            n = len(applied)
            applied_event.clear()
            t0 = time.perf_counter()
            params_q.put(state_to_bytes(model.state_dict()))
            end = time.monotonic() + 5
            while len(applied) == n and time.monotonic() < end:  # woken by the actor: no polling
                applied_event.wait(0.05)
                applied_event.clear()
            if len(applied) > n:
                latencies.append(applied[n] - t0)
        cpu = time.process_time() - cpu0
    finally:
        shutdown.set()
        server.stop(0)
        channel.close()
        for t in threads:
            t.join(2)
    return {"pushes": pushes, "received": len(latencies), "publish_to_applied": _stats(latencies) if latencies else {},
            "process_cpu_ms_per_push": round(cpu * 1e3 / max(pushes, 1), 3),
            "transport": "lerobot 0.4.4 LearnerService.StreamParameters over gRPC (torch.save, 2 MiB pieces)"}


def bench_records(n: int, horizon: int = 10, action_dim: int = 4, state_dim: int = 39) -> list[ChunkRecord]:
    """``n`` distinct records of one robot (content shared, keys distinct)."""
    rng = np.random.default_rng(0)
    arrays = {
        "state": rng.standard_normal(state_dim).astype(np.float32),
        "features": np.zeros(0, np.float16),
        "base": rng.standard_normal((horizon, action_dim)).astype(np.float32),
        "head": np.zeros((horizon, action_dim), np.float32),
        "executed": rng.standard_normal((horizon, action_dim)).astype(np.float32),
        "reward": rng.random(horizon).astype(np.float32),
        "valid": np.ones(horizon, bool),
        "intervention": np.zeros(horizon, bool),
        "takeover_start": np.zeros(horizon, bool),
        "obs_time": np.zeros(horizon),
        "send_time": np.zeros(horizon),
    }
    return [
        ChunkRecord(robot_id="bench", episode_id=i // 50, chunk_index=i % 50, task="bench", done=False, truncated=False,
                    head_version=0, base_version=0, **arrays)
        for i in range(n)
    ]


def bench_experience(records: int, horizon: int = 10) -> dict[str, Any]:
    """Throughput of records from ExperienceLink into a durable ReplayStore (acked)."""
    tmp = Path(tempfile.mkdtemp(prefix="tandem-bench-links-"))
    recs = bench_records(records, horizon)
    store = ReplayStore(tmp / "replay", ReplayConfig(capacity=max(records, 1)))
    server = LinkServer(ServerConfig(experience_port=0, weights_port=0), store).start()
    cfg = LinkConfig(robot_id="bench", experience_port=server.experience_port, weights_port=server.weights_port,
                     spool_dir=str(tmp / "spool"), window=2048)
    link = ExperienceLink(cfg).start()
    try:
        t0 = time.perf_counter()
        for r in recs:
            link.send(r)
        ok = link.wait_acked(120)
        dt = time.perf_counter() - t0
    finally:
        link.close(0)
        server.stop()
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "records": records,
        "horizon": horizon,
        "all_acked": ok,
        "stored": server.stats["stored"],
        "seconds": round(dt, 3),
        "records_per_s": round(records / dt, 1),
        "steps_per_s": round(records * horizon / dt, 1),
        "fsync": True,
    }


def bench_links(pushes: int = 50, records: int = 20000) -> dict[str, Any]:
    """All the measurements (see the module docstring), as one JSON-ready dict."""
    torch.set_num_threads(1)
    model = head_mlp()
    params = sum(p.numel() for p in model.parameters())
    tandem = bench_weights_tandem(model, pushes)
    floor = bench_transport_floor(model, pushes)
    lerobot = bench_weights_lerobot(model, pushes)
    experience = bench_experience(records)
    t50 = tandem["publish_to_applied"].get("p50_ms", float("nan"))
    l50 = lerobot["publish_to_applied"].get("p50_ms", float("nan"))
    t99 = tandem["publish_to_applied"].get("p99_ms", float("nan"))
    l99 = lerobot["publish_to_applied"].get("p99_ms", float("nan"))
    return {
        "weights": {"params": int(params), "bytes": int(params * 4), "tandem": tandem, "transport_floor": floor,
                    "lerobot_grpc": lerobot,
                    "lerobot_over_tandem_p50": round(l50 / t50, 2), "lerobot_over_tandem_p99": round(l99 / t99, 2),
                    "tandem_over_floor_p50_ms": round(t50 - floor["send_to_received"].get("p50_ms", float("nan")), 3)},
        "experience": experience,
    }
