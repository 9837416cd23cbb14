"""Bounded reading (mlic.safeload) and the configuration rule table, tested in-process; the
command-line behaviour is in test_hardening_cli.py."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import time
import tracemalloc
import typing
from pathlib import Path

import pytest

import mlic.safeload as safeload
from mlic.config import Config
from mlic.config_rules import RULES
from mlic.errors import ConfigError, DataError


def depth_ok(text: str, limit: int) -> bool:
    """A direct reference: a quote toggles a string unless an odd run of backslashes precedes
    it; brackets count outside strings only."""
    inside, run, depth = False, 0, 0
    for c in text:
        if c == '"' and run % 2 == 0:
            inside = not inside
        run = run + 1 if c == "\\" else 0
        if not inside and c in "[{":
            depth += 1
        elif not inside and c in "]}":
            depth -= 1
        if depth > limit:
            return False
    return True


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 20])
def test_the_json_depth_scan_agrees_with_a_direct_scan_across_chunk_borders(monkeypatch, chunk):
    monkeypatch.setattr(safeload, "_CHUNK", chunk)
    rng = random.Random(chunk)
    for _ in range(1500):
        text = "".join(rng.choice('[[{]}"\\a') for _ in range(rng.randint(0, 40)))
        try:
            safeload._check_json_depth(io.BytesIO(text.encode()), Path("x.json"), 3)
            ok = True
        except DataError:
            ok = False
        assert ok == depth_ok(text, 3), text


def test_brackets_inside_strings_do_not_count(tmp_path):
    path = tmp_path / "a.json"
    data = {"images": [{"file_name": "[[[[" * 100 + '\\"' + "{{" * 100, "id": 1}]}
    path.write_text(json.dumps(data))
    assert safeload.load_json(path, max_depth=3) == data
    path.write_text(json.dumps({"a": [[[[1]]]]}))
    with pytest.raises(DataError, match="limit of 3"):
        safeload.load_json(path, max_depth=3)


def test_deep_json_is_refused_in_bounded_memory_and_time(tmp_path):
    path = tmp_path / "deep.json"
    path.write_bytes(b"[" * (32 << 20))  # 32 MB
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(DataError, match="limit of 64") as info:
        safeload.load_json(path)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "\n" not in str(info.value)
    assert peak < (8 << 20), peak  # a few chunks' worth: the 32 MB file is never held whole
    assert seconds < 5, seconds


def test_json_that_would_build_too_many_objects_is_refused_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(safeload, "MAX_JSON_CONTAINERS", 50)
    monkeypatch.setattr(safeload, "MAX_JSON_VALUES", 100)
    path = tmp_path / "many.json"
    path.write_text("[" + ",".join(["{}"] * 60) + "]")  # 61 containers
    with pytest.raises(DataError, match="61 arrays and objects, over the limit of 50"):
        safeload.load_json(path)
    path.write_text("[" + ",".join(["0"] * 150) + ', "a,b,c,d"]')  # commas in strings: not values
    with pytest.raises(DataError, match="151 values, over the limit of 100"):
        safeload.load_json(path)
    path.write_text('[1, 2, {"a": [3, "x,y"]}]')
    assert safeload.load_json(path) == [1, 2, {"a": [3, "x,y"]}]


def test_an_integer_of_thousands_of_digits_is_invalid_json_not_a_crash(tmp_path):
    path = tmp_path / "int.json"
    path.write_text("[" + "7" * 5000 + "]")  # Python refuses to convert > 4300 digits
    with pytest.raises(DataError, match="not valid JSON"):
        safeload.load_json(path)


def test_json_size_limit_is_checked_before_reading(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + "1," * 100 + "1]")
    with pytest.raises(DataError, match="over the limit of 100 bytes"):
        safeload.load_json(path, max_bytes=100)


def test_yaml_aliases_are_refused_before_expansion():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
        for p, c in zip("abcdefghi", "bcdefghij", strict=True)
    )  # 10**10 strings if expanded
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"refused at line 2, column \d+: YAML aliases"):
        safeload.parse_yaml(bomb, "bomb.yaml", ConfigError)
    assert time.perf_counter() - start < 1
    assert safeload.parse_yaml("a: &x 1\nb: 2\n", "ok.yaml") == {"a": 1, "b": 2}  # anchors alone


def test_yaml_depth_limit_and_syntax_errors_are_one_line():
    with pytest.raises(DataError, match="limit of 64"):
        safeload.parse_yaml("a: " + "[" * 100 + "]" * 100, "deep.yaml")
    assert safeload.parse_yaml("a: " + "[" * 60 + "]" * 60, "ok.yaml") is not None
    with pytest.raises(DataError) as info:
        safeload.parse_yaml("a: 1\nb: [1, 2\nc: 3\n", "bad.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("bad.yaml: not valid YAML at line ")


def test_non_regular_files_are_refused_at_once(tmp_path):
    import os

    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(DataError, match="FIFO"):
        safeload.read_bytes(tmp_path / "fifo", 100)
    with pytest.raises(DataError, match="directory"):
        safeload.read_bytes(tmp_path, 100)


def numeric_keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys += numeric_keys(hint, f"{prefix}{f.name}.")
        elif hint in (int, float) or _without_none(typing.get_args(hint)) in ((int,), (float,)):
            keys.append(f"{prefix}{f.name}")
    return keys


def _without_none(args: tuple) -> tuple:
    return tuple(a for a in args if a is not type(None))


def test_every_numeric_configuration_key_has_a_range():
    """A new int/float key needs a line in mlic.config_rules.RULES (its range and limits)."""
    missing = [k for k in numeric_keys(Config) if k not in RULES]
    assert not missing, f"add these keys to mlic.config_rules.RULES: {missing}"
    assert all(k in {*numeric_keys(Config), *_string_keys()} for k in RULES)


def _string_keys() -> set[str]:
    return {"name", "data.train_split", "data.val_split", "train.device", "train.compile_mode"}


def test_the_reliability_page_states_the_limits_the_code_applies():
    from mlic.config_rules import MAX_BATCH, MAX_IMAGE_SIZE, MAX_WIDTH
    from mlic.data.records import MAX_IMAGE_SIDE, MAX_LABEL_ENTRIES

    text = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    section = text[text.index("- **Bad input**") :]
    assert safeload.MAX_JSON_BYTES == 1 << 30 and "annotation JSON 1 GiB" in section
    assert safeload.MAX_JSON_CONTAINERS == 2**25 and "2^25 arrays and objects" in section
    assert safeload.MAX_JSON_VALUES == 2**27 and "2^27 values" in section
    assert f"nesting {safeload.MAX_DEPTH} levels" in section
    assert safeload._CHUNK == 256 << 10 and "256 KiB" in section
    assert safeload.MAX_YAML_BYTES == 1 << 20 and "file 1 MiB" in section
    assert safeload.MAX_XML_BYTES == 4 << 20 and "annotation 4 MiB" in section
    assert safeload.MAX_TEXT_BYTES == 64 << 20 and "64 MiB" in section
    assert MAX_LABEL_ENTRIES == 2**28 and "2^28 label entries" in section
    assert f"{MAX_IMAGE_SIDE:,} px" in section and f"32–{MAX_IMAGE_SIZE} px" in section
    assert f"≤ {MAX_BATCH}" in section and f"≤ {MAX_WIDTH}" in section
