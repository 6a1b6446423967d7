"""Events round-trip through their JSON form and reject wrong payloads."""

import json

import pytest

from nx47_pipeline.telemetry.events import (
    COALESCIBLE,
    MUST_DELIVER,
    PAYLOAD_TYPES,
    Event,
    EventKind,
    MessagePayload,
    MetricName,
    MetricPayload,
    ProgressPayload,
    StageName,
    Status,
    StepPayload,
)


def _sample_payloads():
    return {
        EventKind.PROGRESS_UPDATE: ProgressPayload(
            step="features", step_index=2, step_count=9, step_done=3, step_total=12,
            file="1407735", file_done=3, file_total=12, global_=0.42, rate=0.5, eta_s=192.0,
        ),
        EventKind.STEP: StepPayload(phase="end", status="ok", duration_s=1.5, index=1, count=9),
        EventKind.METRIC: MetricPayload(name="val_score", value=0.61, step=3, extra={"split": "val"}),
        EventKind.WARNING: MessagePayload(message="bad file", subject="123.tif", code="unreadable"),
    }


def test_every_kind_has_a_payload_type():
    assert set(PAYLOAD_TYPES) == set(EventKind)


def test_must_deliver_and_coalescible_are_disjoint():
    assert not MUST_DELIVER & COALESCIBLE
    assert EventKind.STEP in MUST_DELIVER and EventKind.EXEC_COMPLETE in MUST_DELIVER


@pytest.mark.parametrize("kind", list(_sample_payloads()))
def test_event_json_round_trip(kind):
    payload = _sample_payloads()[kind]
    ev = Event(seq=7, ts=1700000000.25, t=12.5, kind=kind, stage="features", payload=payload)
    text = json.dumps(ev.to_dict())
    back = Event.from_dict(json.loads(text))
    assert back == ev


def test_progress_global_is_serialised_as_global():
    p = _sample_payloads()[EventKind.PROGRESS_UPDATE]
    d = p.to_dict()
    assert d["global"] == 0.42 and "global_" not in d


def test_unknown_payload_keys_go_to_extra():
    back = MessagePayload.from_dict({"message": "m", "path": "/x"})
    assert back.extra == {"path": "/x"}


def test_wrong_payload_type_is_rejected_naming_both_types():
    with pytest.raises(TypeError, match="STEP.*StepPayload.*MessagePayload"):
        Event(seq=0, ts=0.0, t=0.0, kind=EventKind.STEP, stage="",
              payload=MessagePayload(message="x"))


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: MetricPayload(name="loss", value=1.0), "MetricPayload.name"),
        (lambda: StepPayload(phase="end", status="done"), "StepPayload.status"),
        (lambda: StepPayload(phase="middle"), "StepPayload.phase"),
    ],
)
def test_protocol_names_are_checked_on_construction(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_protocol_names_compare_as_their_json_values():
    p = StepPayload(phase="end", status="cancelled")
    assert p.status is Status.CANCELLED and p.status == "cancelled"
    assert f"{StageName.FIT_PROX}" == "fit_prox" and str(MetricName.VAL_SCORE) == "val_score"
    assert Event.from_dict(Event(seq=0, ts=0.0, t=0.0, kind=EventKind.STEP, stage=StageName.SEARCH,
                                 payload=p).to_dict()).payload.status is Status.CANCELLED
