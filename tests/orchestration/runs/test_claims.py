"""The claim on a run name (siamim/orchestration/runs/claims.py) on local disk: real processes hold it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from siamim.orchestration.runs import claims
from siamim.orchestration.runs.storage import resolve_storage

# A second process that takes the claim on run argv[2] under storage argv[1], says so, and holds it.
HOLDER = """
import sys, time
from siamim.orchestration.runs.claims import take_claim
from siamim.orchestration.runs.storage import resolve_storage
take_claim(resolve_storage(sys.argv[1]), sys.argv[2], heartbeat_s=0.5)
print("held", flush=True)
time.sleep(600)
"""


def hold(storage_uri: str, run_name: str) -> subprocess.Popen:
    """Start a process holding the claim; returns once it holds it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, storage_uri, run_name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    assert line.strip() == "held", proc.stderr.read()
    return proc


def write_claim(storage, run_name: str, **fields) -> None:
    record = {"token": "theirs", "host": "another-host", "pid": 4242, "pid_started": 1.0, "ray_job": None}
    record.update(fields)
    path = storage.join(run_name, claims.CLAIM)
    storage.fs.create_dir(storage.join(run_name), recursive=True)
    with open(path, "w") as f:
        json.dump(record, f)


def test_a_live_owner_refuses_a_second_claim_naming_it_and_resume(tmp_path):
    storage = resolve_storage(str(tmp_path / "runs"))
    proc = hold(storage.uri, "r1")
    try:
        with pytest.raises(claims.RunClaimedError) as err:
            claims.take_claim(storage, "r1")
        text = str(err.value)
        assert f"pid {proc.pid} on host {socket.gethostname()}" in text
        assert "--resume r1" in text and str(tmp_path / "runs") in text
        assert claims.read_claim(storage, "r1")["pid"] == proc.pid  # the refused taker changed nothing
        assert sorted(p.name for p in (tmp_path / "runs" / "r1").iterdir()) == [claims.CLAIM]
        other = claims.take_claim(storage, "r2")  # another name is free
        other.release()
    finally:
        proc.kill()
        proc.wait()


def test_the_claim_of_a_killed_process_is_taken_over_on_its_host(tmp_path):
    storage = resolve_storage(str(tmp_path / "runs"))
    proc = hold(storage.uri, "r1")
    proc.kill()  # SIGKILL: no release; the claim file stays behind
    proc.wait()
    assert claims.read_claim(storage, "r1")["pid"] == proc.pid
    lines = []
    claim = claims.take_claim(storage, "r1", lines.append)
    try:
        assert claims.read_claim(storage, "r1")["token"] == claim.record["token"]
        assert len(lines) == 1 and f"process {proc.pid} on this host has exited" in lines[0]
    finally:
        claim.release()
    assert claims.read_claim(storage, "r1") is None
    assert not (tmp_path / "runs" / "r1").exists()  # nothing else was in it


def test_another_hosts_claim_is_taken_over_only_once_its_heartbeat_is_stale(tmp_path):
    storage = resolve_storage(str(tmp_path / "runs"))
    write_claim(storage, "r1", heartbeat=time.time() - 10, created=time.time() - 10)
    with pytest.raises(claims.RunClaimedError, match="pid 4242 on host another-host"):
        claims.take_claim(storage, "r1")
    write_claim(storage, "r1", heartbeat=time.time() - claims.STALE_S - 5, created=time.time() - 9000)
    lines = []
    claim = claims.take_claim(storage, "r1", lines.append)
    assert "heartbeat is" in lines[0] and "another-host" in lines[0]
    claim.release()


def test_a_reused_pid_on_this_host_is_a_gone_owner():
    me = claims.owner_record("t")
    assert claims.owner_gone(me) is None
    assert "later process" in claims.owner_gone({**me, "pid_started": me["pid_started"] - 1000})


def test_the_owner_refreshes_its_heartbeat_and_release_deletes_the_claim(tmp_path):
    storage = resolve_storage(str(tmp_path / "runs"))
    claim = claims.take_claim(storage, "r1", heartbeat_s=0.1)
    first = claims.read_claim(storage, "r1")["heartbeat"]
    deadline = time.time() + 20
    while claims.read_claim(storage, "r1")["heartbeat"] == first and time.time() < deadline:
        time.sleep(0.05)
    assert claims.read_claim(storage, "r1")["heartbeat"] > first
    claim.release()
    claim.release()  # idempotent
    assert claims.read_claim(storage, "r1") is None


def race_for_claim(storage, name: str, takers: int) -> tuple[list, int]:
    """``takers`` threads take the claim on ``name`` at once; returns (the claims won, how many were refused)."""
    won, refused = [], []

    def take():
        try:
            won.append(claims.take_claim(storage, name))
        except claims.RunClaimedError:
            refused.append(1)

    threads = [threading.Thread(target=take) for _ in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, len(refused)


def test_concurrent_takers_of_one_name_one_wins(tmp_path):
    storage = resolve_storage(str(tmp_path / "runs"))
    won, refused = race_for_claim(storage, "r1", 8)
    assert len(won) == 1 and refused == 7
    won[0].release()


def test_releases_claims_gives_the_claim_back_when_the_launch_raises(tmp_path):
    storage = resolve_storage(str(tmp_path / "runs"))

    @claims.releases_claims
    def launch():
        claims.take_claim(storage, "r1")
        assert claims.read_claim(storage, "r1") is not None
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        launch()
    assert claims.read_claim(storage, "r1") is None
    claims.take_claim(storage, "r1").release()  # and the name is free again


def test_concurrent_takers_of_a_gone_owners_claim_one_wins(tmp_path):
    storage = resolve_storage(str(tmp_path / "runs"))
    write_claim(storage, "r1", heartbeat=time.time() - claims.STALE_S - 5, created=time.time() - 9000)
    won, refused = race_for_claim(storage, "r1", 8)
    assert len(won) == 1 and refused == 7
    assert claims.read_claim(storage, "r1")["token"] == won[0].record["token"]
    won[0].release()


def test_a_claim_block_holds_the_name_and_gives_it_back(tmp_path):
    storage = resolve_storage(str(tmp_path / "runs"))
    with claims.claim(storage, "r1") as held:
        assert claims.read_claim(storage, "r1")["token"] == held.record["token"]
        with pytest.raises(claims.RunClaimedError, match="--resume r1"):
            claims.take_claim(storage, "r1")
    assert claims.read_claim(storage, "r1") is None
