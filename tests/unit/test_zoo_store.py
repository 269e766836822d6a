"""The zoo cache is keyed by what builds the weights: the recipe and the builder's source code."""

import importlib.util
import sys

import pytest

from mechwork.models.zoo import ZooEntry, checkpoint_dir, ensure_built, get_entry

BUILDER = '''
SCALE = {scale}


def build(folder):
    (folder / "weights.txt").write_text(str(SCALE * 2))
    return {{"scale": SCALE}}
'''


def _entry_from_source(tmp_path, scale: int, module_name: str) -> ZooEntry:
    path = tmp_path / f"{module_name}.py"
    path.write_text(BUILDER.format(scale=scale))
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    borrowed = get_entry("induction")  # its task and ground truth: only the builder matters here
    return ZooEntry("toy", "a toy entry", "constructed", module.build, task=borrowed.task,
                    ground_truth=borrowed.ground_truth, recipe={"seed": 0})


def test_editing_a_builder_rebuilds_the_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHWORK_CACHE", str(tmp_path / "cache"))
    first = _entry_from_source(tmp_path, 3, "toy_builder_a")
    folder = ensure_built(first)
    assert (folder / "weights.txt").read_text() == "6"

    same = _entry_from_source(tmp_path, 3, "toy_builder_a")  # same source again: served from the cache
    assert checkpoint_dir(same) == folder
    (folder / "weights.txt").write_text("cached")
    assert (ensure_built(same) / "weights.txt").read_text() == "cached"

    edited = _entry_from_source(tmp_path, 5, "toy_builder_a")  # the builder's code changed
    assert checkpoint_dir(edited) != folder
    assert (ensure_built(edited) / "weights.txt").read_text() == "10"


def test_changing_the_recipe_rebuilds_the_entry(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setenv("MECHWORK_CACHE", str(tmp_path / "cache"))
    entry = _entry_from_source(tmp_path, 3, "toy_builder_b")
    other = dataclasses.replace(entry, recipe={"seed": 1})
    assert checkpoint_dir(entry) != checkpoint_dir(other)


@pytest.mark.parametrize("name", ["induction", "lookup", "pairs", "trojan"])
def test_built_in_entries_record_their_source_hash(name):
    from mechwork.models.zoo._store import builder_source_hash

    entry = get_entry(name)
    assert len(builder_source_hash(entry)) == 64
    assert builder_source_hash(entry) == builder_source_hash(entry)
