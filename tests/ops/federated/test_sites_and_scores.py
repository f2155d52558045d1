"""Sites, tile classes, IID/non-IID splits, classifier scores, and the server-side guard."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ops.federated.classifier import scores
from ops.federated.runtime import GUARD_DIR
from ops.federated.sites import load_site, read_site_map, split_sites, write_prepared
from ops.slides.tile_store import create_tile_array


def test_split_sites_iid_and_majority_class():
    labels = np.array([0] * 200 + [1] * 200)
    iid = split_sites(labels, 4, seed=0)
    assert sorted(np.concatenate(iid).tolist()) == list(range(400))
    for majority in (0.6, 0.8, 0.9):
        sites = split_sites(labels, 4, majority=majority, seed=0)
        for k, idx in enumerate(sites):
            assert len(idx) == 100
            assert np.mean(labels[idx] == k % 2) == pytest.approx(majority, abs=0.01)
        assert len(np.unique(np.concatenate(sites))) == 400, "no sample is in two sites"
    with pytest.raises(ValueError, match="majority: expected a share in"):
        split_sites(labels, 4, majority=1.0)


def test_site_map_csv(tmp_path):
    path = tmp_path / "sites.csv"
    path.write_text("slide,site\ncase_a,hospital_1\ncase_b,hospital_2\n")
    assert read_site_map(path, ["case_a", "case_b"]) == {"case_a": "hospital_1", "case_b": "hospital_2"}
    with pytest.raises(ValueError, match=r"sites.csv: slides \['case_c'\] have no site"):
        read_site_map(path, ["case_a", "case_c"])
    path.write_text("name,hospital\n")
    with pytest.raises(ValueError, match="expected a CSV with columns slide,site"):
        read_site_map(path, ["case_a"])


def _tile_store(folder, n: int) -> None:
    folder.mkdir(parents=True)
    arr = create_tile_array(folder / "tiles.zarr", n, 64)
    for i in range(n):
        arr[i] = np.full((64, 64, 3), 40 * i, np.uint8)
    pd.DataFrame(
        {"tile_index": range(n), "slide": "case_a", "slide_id": "sl-1", "mpp": 0.5, "x": 0, "y": 0}
    ).to_parquet(folder / "tiles.parquet")


def test_load_site_reads_tile_stores_with_label_csv(tmp_path):
    _tile_store(tmp_path / "case_a" / "tiles", 3)
    (tmp_path / "labels.csv").write_text("slide,tile_index,label\ncase_a,0,0\ncase_a,1,1\ncase_a,2,1\n")
    site = load_site(tmp_path, 16)
    assert site.images.shape == (3, 16, 16, 3) and site.labels.tolist() == [0, 1, 1]
    assert site.slides == ("sl-1",) and site.class_shares(2) == pytest.approx([1 / 3, 2 / 3])
    (tmp_path / "labels.csv").write_text("slide,tile_index,label\ncase_a,0,0\n")
    with pytest.raises(ValueError, match="labels.csv: no label for slide 'case_a' tile 1"):
        load_site(tmp_path, 16)
    with pytest.raises(FileNotFoundError, match="holds no tile store"):
        load_site(tmp_path / "nowhere", 16)


def test_prepared_site_round_trip(tmp_path):
    images = np.zeros((4, 8, 8, 3), np.uint8)
    write_prepared(tmp_path, images, np.array([0, 1, 1, 0]))
    assert load_site(tmp_path, 8).labels.tolist() == [0, 1, 1, 0]


def test_scores_accuracy_f1_recall():
    truth, pred = np.array([0, 0, 1, 1, 1, 1]), np.array([0, 1, 1, 1, 0, 1])
    s = scores(truth, pred, 2)
    assert s.accuracy == pytest.approx(4 / 6)
    assert s.recall == pytest.approx((0.5, 0.75))
    assert s.f1 == pytest.approx(2 * 0.75 * 0.75 / 1.5)  # precision 3/4, recall 3/4 of class 1


def test_server_guard_refuses_site_folders(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "tiles.parquet").write_text("secret")
    env = {
        **os.environ,
        "PYTHONPATH": str(GUARD_DIR),
        "HISTOFACTORY_DENY_PATHS": str(site),
        "HISTOFACTORY_DENY_LOG": str(tmp_path / "denied.log"),
    }
    code = "import os; print(open(os.environ['PWD_FILE']).read())"
    done = subprocess.run(
        [sys.executable, "-c", code], env={**env, "PWD_FILE": str(site / "tiles.parquet")}, capture_output=True
    )
    assert done.returncode != 0 and b"may not read site data" in done.stderr
    assert "tiles.parquet" in (tmp_path / "denied.log").read_text()
    listing = subprocess.run([sys.executable, "-c", f"import os; os.listdir({str(site)!r})"], env=env)
    assert listing.returncode != 0
    other = tmp_path / "other.txt"
    other.write_text("ok")
    fine = subprocess.run([sys.executable, "-c", f"print(open({str(other)!r}).read())"], env=env, capture_output=True)
    assert fine.stdout.strip() == b"ok"
