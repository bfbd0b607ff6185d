"""The agent registry's record (shared/agent_record.py): what HSET writes, read back."""

from __future__ import annotations

import pytest

from shared.agent_record import AgentRecord, AgentUpdate

FULL = AgentRecord(
    agent_id="ag-1",
    owner="alice",
    runner_id="r1",
    status="running",
    name="fixer",
    model="echo",
    workspace="ws",
    workspace_path="/srv/ws",
    host="h1",
    pid=4242,
    start_time=1_700_000_000_123,
    proc_create_time=1_700_000_000.37,
    keeper_pid=4241,
    keeper_create_time=1_699_999_999.1,
    memory_mb=512,
    cpu_cores=1.5,
    cpus=(0, 3),
    request_id="req-1",
    end_time=1_700_000_009_000,
    exit_code=3,
    signal="SIGTERM",
    reason="signal",
)


def as_redis(fields: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_a_record_reads_back_as_written_from_the_bytes_redis_returns():
    fields = FULL.to_fields()
    assert all(isinstance(v, str) for v in fields.values())
    assert fields["procCreateTime"] == "1700000000.37" and fields["cpus"] == "0,3"
    assert AgentRecord.from_fields("ag-1", as_redis(fields)) == FULL
    assert AgentRecord.from_fields("ag-1", fields) == FULL


def test_unset_fields_are_not_written_and_read_back_as_none():
    record = AgentRecord(agent_id="ag-2", owner="bob", runner_id="r2", status="starting")
    assert record.to_fields() == {
        "agentId": "ag-2",
        "owner": "bob",
        "runnerId": "r2",
        "status": "starting",
        "name": "",
        "model": "",
    }
    assert AgentRecord.from_fields("ag-2", record.to_fields()) == record


def test_a_record_of_an_older_version_reads_with_what_it_has():
    # Before keeperPid/keeperCreateTime existed; numbers as another writer may store them.
    old = {
        "agentId": "ag-3",
        "owner": "carol",
        "runnerId": "r3",
        "status": "paused",
        "name": "old",
        "pid": "77",
        "startTime": "1.7e12",
        "procCreateTime": "12.5",
        "memoryMb": "256.0",
    }
    record = AgentRecord.from_fields("ag-3", as_redis(old))
    assert record is not None
    assert (record.pid, record.start_time, record.memory_mb) == (77, 1_700_000_000_000, 256)
    assert record.proc_create_time == 12.5
    assert record.keeper_pid is None and record.keeper_create_time is None
    assert record.cpus is None and record.end_time is None and record.model == ""


@pytest.mark.parametrize(
    ("field", "value", "attribute"),
    [
        ("pid", "-1", "pid"),
        ("pid", "x", "pid"),
        ("keeperPid", "0", "keeper_pid"),
        ("startTime", "nan", "start_time"),
        ("procCreateTime", "soon", "proc_create_time"),
        ("cpus", "0,a", "cpus"),
        ("status", "exploded", "status"),
        ("signal", "", "signal"),
    ],
)
def test_an_unreadable_field_reads_as_none(field: str, value: str, attribute: str):
    record = AgentRecord.from_fields("ag-1", {**FULL.to_fields(), field: value})
    assert record is not None and getattr(record, attribute) is None


@pytest.mark.parametrize("missing", ["owner", "runnerId"])
def test_a_hash_without_owner_or_runner_is_no_record(missing: str):
    fields = FULL.to_fields()
    del fields[missing]
    assert AgentRecord.from_fields("ag-1", fields) is None
    # What is left of a record after Redis lost it and an update was written.
    assert AgentRecord.from_fields("ag-1", AgentUpdate(status="running").to_fields()) is None
    assert AgentRecord.from_fields("ag-1", {}) is None


def test_the_key_names_the_agent():
    fields = {**FULL.to_fields()}
    del fields["agentId"]
    record = AgentRecord.from_fields("ag-1", fields)
    assert record is not None and record.agent_id == "ag-1"


def test_an_update_writes_only_what_it_sets_under_the_records_names():
    assert AgentUpdate(status="paused").to_fields() == {"status": "paused"}
    end = AgentUpdate(status="crashed", end_time=9, exit_code=0, signal=None, reason="oom")
    assert end.to_fields() == {
        "status": "crashed",
        "endTime": "9",
        "exitCode": "0",
        "reason": "oom",
    }
    record = AgentRecord.from_fields("ag-1", {**FULL.to_fields(), **end.to_fields()})
    assert record is not None and record.ended
    assert (record.status, record.end_time, record.exit_code, record.reason) == (
        "crashed",
        9,
        0,
        "oom",
    )
    assert record.signal == "SIGTERM"  # not written by the update: the earlier value stays
