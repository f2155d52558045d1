"""The web UIs as a person uses them: Dagster and MLflow served locally, opened in headless Chromium.

One module-scoped data root holds a materialized mini demo (one slide, the ``tiling`` job) and an MLflow tracking store
with one run; each server starts once for the module and is killed by process group afterwards. Screenshots of every
page land in ``test-artifacts/ui/`` (gitignored) for a human to look at.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ui_helpers import (
    CHROMIUM,
    free_port,
    headless_chromium,
    loaded_image_width,
    running_server,
    wait_for_dagster_code_locations,
    wait_for_texts,
    wait_until,
)

pytestmark = [
    pytest.mark.integration,
    # mlflow's sqlite store trips a SQLAlchemy deprecation that is not ours to fix
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} not installed (apt-get install chromium chromium-driver); browser tests run in CI",
    ),
]

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "test-artifacts" / "ui"
BIN = Path(sys.executable).parent
SLIDE_KEY = "ui_case"
RUN_NAME = "ui_smoke_run"
EXPERIMENT = "histofactory"
LOCATION = "pipelines"  # the code location's name under `dagster-webserver -m pipelines`
PAGE_TIMEOUT = 60.0  # seconds for a page to show what we wait for (pages take 1-5 s on 2 busy cores)
# No telemetry and no first-visit "join the community" dialog over the pages.
DAGSTER_YAML = "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
# No MLflow telemetry, and no job-runner/huey worker processes beside the MLflow server.
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass(frozen=True)
class MlflowRun:
    tracking_uri: str
    experiment_id: str
    run_id: str


def _factory_env(home: Path) -> dict[str, str]:
    return {**os.environ, **QUIET_ENV, "HISTOFACTORY_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}


@pytest.fixture(scope="module")
def ui_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with one demo slide registered and its ``tiling`` partition materialized."""
    from ops.slides.demo_slides import DemoSlideSpec, write_demo_slide
    from pipelines.cli import QUIET_RUN, get_instance, sync_slides
    from pipelines.definitions import defs

    home = tmp_path_factory.mktemp("ui") / "data"
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text(DAGSTER_YAML)
    write_demo_slide(DemoSlideSpec(SLIDE_KEY, 3072, 3072, seed=7), home / "slides")
    with pytest.MonkeyPatch.context() as mp:  # the env is restored before any test runs
        mp.setenv("HISTOFACTORY_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(home / "dagster"))
        with get_instance() as instance:
            assert sync_slides(instance, echo=lambda _m: None) == [SLIDE_KEY]
            result = defs.resolve_job_def("tiling").execute_in_process(
                partition_key=SLIDE_KEY, instance=instance, run_config=QUIET_RUN
            )
            assert result.success
    return home


@pytest.fixture(scope="module")
def mlflow_run(ui_home: Path) -> MlflowRun:
    """One finished run in experiment ``histofactory`` of a sqlite tracking store: params, a metric, a picture."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in QUIET_ENV.items():
            mp.setenv(name, value)
        from mlflow import MlflowClient

        artifacts = ui_home / "mlartifacts"
        artifacts.mkdir()
        uri = f"sqlite:///{ui_home / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri)  # no global tracking URI: nothing leaks into other tests
        experiment_id = client.create_experiment(
            EXPERIMENT,
            artifact_location=artifacts.as_uri(),
            tags={"mlflow.experimentKind": "custom_model_development"},
        )
        run = client.create_run(experiment_id, run_name=RUN_NAME, tags={"dagster/partition": SLIDE_KEY})
        run_id = run.info.run_id
        client.log_param(run_id, "tile_size", 512)
        client.log_param(run_id, "target_mpp", 0.5)
        client.log_metric(run_id, "kept_tiles", 8)
        client.log_artifact(run_id, str(ui_home / "tiling" / SLIDE_KEY / "tiles" / "thumbnail.png"), "samples")
        client.set_terminated(run_id)
    return MlflowRun(uri, experiment_id, run_id)


@pytest.fixture(scope="module")
def dagster_url(ui_home: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "dagster-webserver"), "-m", "pipelines", "-h", "127.0.0.1", "-p", str(port)]
    log = SHOTS / "dagster-webserver.log"
    with running_server(cmd, _factory_env(ui_home), f"{url}/server_info", log, cwd=ui_home.parent):
        assert wait_for_dagster_code_locations(url, log) == [LOCATION]
        yield url


@pytest.fixture(scope="module")
def mlflow_url(ui_home: Path, mlflow_run: MlflowRun) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        mlflow_run.tracking_uri,
        "--default-artifact-root",
        str(ui_home / "mlartifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with running_server(cmd, _factory_env(ui_home), f"{url}/health", SHOTS / "mlflow-server.log", cwd=ui_home.parent):
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with headless_chromium(tmp_path_factory.mktemp("chromium-profile"), SHOTS / "chromedriver.log") as driver:
        yield driver


def _shot(driver: Any, name: str) -> None:
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def test_asset_graph_shows_every_asset(dagster_url: str, browser: Any) -> None:
    """The global lineage shows every group; each group's lineage page shows every asset of the group."""
    from pipelines.definitions import defs

    graph = defs.get_repository_def().asset_graph
    by_group: dict[str, list[str]] = {}
    for key in graph.get_all_asset_keys():
        by_group.setdefault(graph.get(key).group_name, []).append(key.path[-1])
    assert by_group, "pipelines.defs defines no assets"

    # "Lineage" in the side bar. With several groups each starts collapsed to one box, so assets are checked per group.
    browser.get(f"{dagster_url}/asset-groups")
    wait_for_texts(
        browser, ["Global asset lineage", *sorted(by_group)], PAGE_TIMEOUT, SHOTS / "dagster-lineage-FAILED.png"
    )
    _shot(browser, "dagster-lineage")
    for group, names in sorted(by_group.items()):
        browser.get(f"{dagster_url}/locations/{LOCATION}/asset-groups/{group}")
        wait_for_texts(
            browser,
            [group, "Asset Group in", *sorted(names)],
            PAGE_TIMEOUT,
            SHOTS / f"dagster-group-{group}-FAILED.png",
        )
        _shot(browser, f"dagster-group-{group}")


def test_tissue_tiles_page_shows_metadata_and_kept_grid_picture(ui_home: Path, dagster_url: str, browser: Any) -> None:
    from resources import FactoryStorage

    slide_id = FactoryStorage(home=str(ui_home)).registry().get(SLIDE_KEY).slide_id
    browser.get(f"{dagster_url}/assets/tissue_tiles?partition={SLIDE_KEY}")
    wait_for_texts(
        browser,
        ["tissue_tiles", SLIDE_KEY, "slide_id", slide_id, "grid_tiles", "tile_store", "kept_grid"],
        PAGE_TIMEOUT,
        SHOTS / "dagster-tissue_tiles-FAILED.png",
    )
    _shot(browser, "dagster-tissue_tiles")

    # Markdown metadata sits behind a "[Show Markdown]" link in its row; the dialog renders the data-URI picture.
    from selenium.webdriver.common.by import By

    link_xpath = "//tr[.//*[normalize-space(text())='kept_grid']]//a[normalize-space(text())='[Show Markdown]']"
    link = wait_until(
        browser,
        lambda d: d.find_element(By.XPATH, link_xpath),
        "a [Show Markdown] link for kept_grid",
        PAGE_TIMEOUT,
        SHOTS / "dagster-kept_grid-FAILED.png",
    )
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", link)
    css = "img[src^='data:image/png;base64,'][alt^='kept tiles']"
    width = wait_until(
        browser,
        lambda d: loaded_image_width(d, css),
        "the kept_grid picture loaded (naturalWidth > 0)",
        PAGE_TIMEOUT,
        SHOTS / "dagster-kept_grid-FAILED.png",
    )
    assert width > 0
    _shot(browser, "dagster-kept_grid")


def test_mlflow_ui_shows_experiment_run_and_picture(mlflow_url: str, mlflow_run: MlflowRun, browser: Any) -> None:
    # MLflow 3 opens experiments in its GenAI view; workflowType=machine_learning is the "Model training" toggle.
    exp, run = mlflow_run.experiment_id, mlflow_run.run_id
    ml_view = "workflowType=machine_learning"
    browser.get(f"{mlflow_url}/#/experiments/{exp}/runs?{ml_view}")
    wait_for_texts(browser, [EXPERIMENT, RUN_NAME, "1 matching run"], PAGE_TIMEOUT, SHOTS / "mlflow-runs-FAILED.png")
    _shot(browser, "mlflow-runs")

    browser.get(f"{mlflow_url}/#/experiments/{exp}/runs/{run}?{ml_view}")
    wait_for_texts(
        browser,
        [RUN_NAME, "kept_tiles", "tile_size", "target_mpp", "Finished"],
        PAGE_TIMEOUT,
        SHOTS / "mlflow-run-FAILED.png",
    )
    _shot(browser, "mlflow-run")

    browser.get(f"{mlflow_url}/#/experiments/{exp}/runs/{run}/artifacts/samples/thumbnail.png?{ml_view}")
    width = wait_until(
        browser,
        lambda d: loaded_image_width(d, "img[src^='blob:']"),
        "the artifact picture loaded (naturalWidth > 0)",
        PAGE_TIMEOUT,
        SHOTS / "mlflow-artifact-FAILED.png",
    )
    assert width > 0
    _shot(browser, "mlflow-artifact")
