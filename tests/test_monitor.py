"""`train --tensorboard`: event files readable as TensorBoard reads them, holding what log.jsonl holds."""

import glob
import struct
import zlib

import pytest

from edm_space.event_files import crc32c, masked_crc
from edm_space.metrics import loss_floor
from edm_space.training import load_trained, load_training_data, read_log
from helpers_cli import cli_error, cli_ok

ARGS = ["--data", "moons", "--data-size", "256", "--steps", "20", "--batch", "16", "--warmup", "16", "--net-option", "width=16",
        "--net-option", "depth=1", "--checkpoint-every", "10", "--log-every", "5", "--ema-stds", "none"]


pytestmark = pytest.mark.usefixtures("one_thread")


def crc32c_bitwise(data: bytes) -> int:
    """CRC-32C bit by bit (RFC 3720, B.4), a second computation of the table-driven one."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def test_crc32c_has_the_standard_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)
    for data in (b"", b"\x00" * 32, bytes(range(256))):
        assert crc32c(data) == crc32c_bitwise(data)


def varint(data, i):
    value, shift = 0, 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def fields(data):
    """Protocol-buffer fields of a message: {number: [values]} (varints as int, fixed as bytes, lengths as bytes)."""
    out, i = {}, 0
    while i < len(data):
        key, i = varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            length, i = varint(data, i)
            value, i = data[i:i + length], i + length
        out.setdefault(number, []).append(value)
    return out


def read_events(path):
    data, i, events = open(path, "rb").read(), 0, []
    while i < len(data):
        header = data[i:i + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[i + 8:i + 12])[0] == masked_crc(header)
        body = data[i + 12:i + 12 + length]
        assert struct.unpack("<I", data[i + 12 + length:i + 16 + length])[0] == masked_crc(body)
        events.append(fields(body))
        i += 16 + length
    return events


def run_events(run):
    """({(tag, step): scalar}, {(tag, step): image fields}) of a run's one event file."""
    (path,) = glob.glob(str(run / "tensorboard" / "events.out.tfevents.*"))
    events = read_events(path)
    assert events[0][3] == [b"brain.Event:2"]
    scalars, images = {}, {}
    for event in events[1:]:
        step = event[2][0]
        for value in fields(event[5][0])[1]:
            value = fields(value)
            tag = value[1][0].decode()
            if 2 in value:
                scalars[(tag, step)] = struct.unpack("<f", value[2][0])[0]
            else:
                images[(tag, step)] = fields(value[4][0])
    return scalars, images


def test_tensorboard_events_hold_the_log_and_sample_pictures(tmp_path, capsys):
    run = tmp_path / "run"
    cli_ok(["train", *ARGS, "--tensorboard", "--out", str(run)], capsys)
    scalars, images = run_events(run)
    assert not any(tag.startswith("heldout") for tag, _ in scalars)  # no --eval-every, no held-out loss
    for entry in read_log(str(run)):
        assert scalars[("loss", entry["step"])] == pytest.approx(entry["loss"], rel=1e-6)
        assert scalars[("lr", entry["step"])] == pytest.approx(entry["lr"], rel=1e-6)
        for bucket, loss in entry["loss_by_sigma"].items():
            if loss is not None:
                assert scalars[(f"loss_by_sigma/{bucket}", entry["step"])] == pytest.approx(loss, rel=1e-6)
        assert scalars[("grad_norm", entry["step"])] > 0
    assert sorted(images) == [("samples", 10), ("samples", 20)]  # with every checkpoint
    for image in images.values():
        png = image[4][0]
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
        assert (image[1][0], image[2][0]) == (height, width)
        assert zlib.crc32(png[12:29]) == struct.unpack(">I", png[29:33])[0]


def test_tensorboard_itself_reads_the_events(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    cli_ok(["train", *ARGS, "--tensorboard", "--sample-every", "160", "--out", str(run)], capsys)
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("loss")] == [5, 10, 15, 20]
    assert [e.step for e in accumulator.Images("samples")] == [10, 20]


def test_a_bad_sample_cadence_is_refused_in_one_line(tmp_path, capsys):
    cli_error(["train", *ARGS, "--tensorboard", "--sample-every", "0", "--out", str(tmp_path / "run")], capsys, ["--sample-every", "0"], roots=[tmp_path])


def test_heldout_loss_at_its_cadence_is_the_eval_loss_of_the_ema_weights(tmp_path, capsys):
    run = tmp_path / "run"
    cli_ok(["train", *ARGS, "--tensorboard", "--eval-every", "160", "--out", str(run)], capsys)  # every 10 steps
    scalars, _ = run_events(run)
    heldout = {(tag, step): value for (tag, step), value in scalars.items() if tag.startswith("heldout_loss_by_sigma/")}
    assert sorted({step for _, step in heldout}) == [10, 20]
    for step in (10, 20):  # the checkpoints of those steps hold the EMA weights the monitor scored
        denoiser, config, _, _, _ = load_trained(str(run), ema=True, step=step)
        items, _ = load_training_data(config)  # moons has no test split: its training items (all 256)
        rows = loss_floor(denoiser, denoiser.formulation, items.double(), num_draws=256, seed=0)
        assert len(rows) == 9
        for row in rows:
            value = heldout[(f"heldout_loss_by_sigma/{row['sigma_lo']:g}-{row['sigma_hi']:g}", step)]
            assert value == pytest.approx(row["model"], rel=1e-6)


@pytest.mark.parametrize("value", ["0", "-160"])
def test_a_bad_eval_cadence_is_refused_in_one_line(tmp_path, capsys, value):
    cli_error(["train", *ARGS, "--tensorboard", "--eval-every", value, "--out", str(tmp_path / "run")], capsys, ["--eval-every", value],
              roots=[tmp_path])
