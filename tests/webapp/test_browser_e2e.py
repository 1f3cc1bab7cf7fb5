"""End to end in a real browser: the Streamlit app, its job runner and the trainer, driven by headless Chromium.

New run (BERT, uploaded CSV, preview, a separate test file, the demo preset's settings, the time estimate and the
wrapped launch command, launch) -> Runs (waits for "finished", curves, scores on the validation split and the test
file, the adapter zip's model card, the merged model built and downloaded) -> Compare (the run and its fine-tuned
accuracy in the table, its test-file scores) -> Playground (Classify shows a prediction).
A full-page screenshot of each page goes to tmp_path/screenshots; with UPDATE_SCREENSHOTS=1 they also replace
docs/screenshots/*.png, the README's pictures (install fonts-noto-color-emoji first, or the page icons are boxes).

Needs Debian's /usr/bin/chromium (scripts/setup.sh --dev installs it; Playwright's own browser download is not
used), else skipped. Offline, the BERT preset is the demo checkpoint made on first start: about 1 minute on 2 cores.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, write_sentiment_csv
from tests.webapp.conftest import processes_of
from webapp.services import catalog, devices

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev extra: scripts/setup.sh --dev")
expect = sync_api.expect

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="needs Debian's chromium: scripts/setup.sh --dev (apt-get install chromium chromium-driver)",
)
BROWSER_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}
SCREENSHOTS = REPO / "docs" / "screenshots"
# Training is waited on by progress, not by a wall clock: a busy 2-core machine may train at a quarter speed.
# The run fails the test only when its progress label stands still this long (model loading and the base
# evaluation change nothing for a while), or when it ends failed or cancelled.
STALL_S = 300
DEMO_BERT = catalog.DEMO_OVERRIDES["bert"]
STREAMLIT = Path(sys.executable).with_name("streamlit")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_all(home: Path, app: subprocess.Popen) -> list[int]:
    """SIGTERM then SIGKILL everything the test started; returns the pids still alive at the end (none, we hope)."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in [app.pid, *processes_of(home)]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            app.poll()
            left = processes_of(home) + ([app.pid] if app.returncode is None else [])
            if not left:
                return []
            time.sleep(0.2)
    return left


@pytest.fixture
def app(tmp_path):
    """The app on a free port, with its own LORA_LAB_HOME; everything it started is stopped afterwards."""
    # A short LORA_LAB_HOME: its paths show in the screenshots (the command, the runs' model column).
    home = Path(tempfile.mkdtemp(prefix="lora-lab-e2e-")).resolve()
    port = free_port()
    env = {
        **os.environ,
        "LORA_LAB_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    log = (tmp_path / "streamlit.log").open("wb")
    proc = subprocess.Popen(
        [
            str(STREAMLIT),
            "run",
            "webapp/app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--browser.gatherUsageStats",
            "false",
            "--client.toolbarMode",
            "viewer",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                    if answer.read().strip() == b"ok":
                        break
            except OSError:
                pass
            assert proc.poll() is None, f"streamlit exited: {(tmp_path / 'streamlit.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "streamlit did not answer /_stcore/health within 60 s"
            time.sleep(0.3)
        yield url, home
    finally:
        left = stop_all(home, proc)
        log.close()
        shutil.rmtree(home, ignore_errors=True)
        assert not left, f"processes left behind: {left}"


@pytest.fixture
def page(tmp_path):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS, headless=True)
        context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        page = context.new_page()
        page.set_default_timeout(60_000)
        try:
            yield page
        finally:
            context.close()
            browser.close()


def settle(page, quiet_s: float = 1.0, timeout_s: float = 60.0) -> None:
    """Wait until Streamlit has finished the script run: no 'Running…' widget, spinner or skeleton for quiet_s."""
    busy = page.locator('[data-testid="stStatusWidget"], [data-testid="stSpinner"], [data-testid="stSkeleton"]')
    deadline, quiet_since = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        if busy.count() == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_s:
                return
        else:
            quiet_since = None
        page.wait_for_timeout(100)
    raise AssertionError("the page was still running after %.0f s" % timeout_s)


def shoot(page, out: Path, name: str) -> Path:
    """A full-page screenshot: Streamlit scrolls inside stMain, so the viewport is grown to the content first.

    Taken again while any element is stale (greyed out during a rerun, e.g. of the Runs page's 2 s fragments).
    """
    height = page.get_by_test_id("stMain").evaluate("el => el.scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], height)})
    page.wait_for_timeout(500)  # charts lay themselves out again for the new size
    page.mouse.move(VIEWPORT["width"] // 2, 5)  # off the sidebar (hovering it shows its collapse button)
    stale = page.locator('[data-stale="true"]')
    path = out / f"{name}.png"
    for _ in range(30):
        if stale.count() == 0:
            page.screenshot(path=str(path), full_page=True, animations="disabled")
            if stale.count() == 0:
                break
        page.wait_for_timeout(200)
    else:
        raise AssertionError(f"{name}: the page kept rerunning, no clean screenshot")
    page.set_viewport_size(VIEWPORT)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / path.name)
    return path


def choose(page, label: str, option: str, attempts: int = 4) -> None:
    """Pick ``option`` in the selectbox labelled ``label``. The Runs page's 2 s fragments can redraw an open list
    under the pointer (the click then finds its option detached until it times out), so the pick is tried again,
    by typing the option's name and Enter on the later tries."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.get_by_test_id("stSelectbox").filter(has_text=label)
    for attempt in range(attempts):
        settle(page)
        box.click()
        try:
            if attempt == 0:
                page.get_by_role("option", name=option).click(timeout=15_000)
            else:
                page.keyboard.type(option)
                page.get_by_role("option", name=option).wait_for(timeout=15_000)
                page.keyboard.press("Enter")
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    raise AssertionError(f"could not choose {option!r} in {label!r} after {attempts} tries")


def pick(page, label: str, option: str, attempts: int = 4) -> None:
    """Check ``option`` of the radio labelled ``label``, clicked again while it is not checked (a click during the
    opening of its expander, or during a rerun, can miss)."""
    radio = page.get_by_test_id("stRadio").filter(has=page.get_by_test_id("stWidgetLabel").filter(has_text=label))
    choice = radio.get_by_role("radio", name=option, exact=True)
    for _ in range(attempts):
        settle(page)
        radio.get_by_test_id("stRadioOption").filter(has_text=option).click()
        try:
            expect(choice).to_be_checked(timeout=10_000)
            settle(page)
            return
        except AssertionError:
            pass
    raise AssertionError(f"could not pick {option!r} in {label!r} after {attempts} tries")


def download(page, button: str, to: Path, attempts: int = 3) -> Path:
    """Click the download button labelled ``button`` and save what the browser receives to ``to``.

    The button's callable runs when clicked (a deferred download), but the click also reruns the page, and a rerun
    that ends before the browser's request for the file drops it ("Deferred file ... not found" under the button,
    in the app's log too). A user clicks again; so does this, saying so.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    widget = page.get_by_test_id("stDownloadButton").filter(has=page.get_by_role("button", name=button))
    lost = page.get_by_text(re.compile("Deferred file .* not found"))
    for _ in range(attempts):
        expect(lost).to_have_count(0, timeout=15_000)  # the last try's message goes after 5 s
        settle(page)
        try:
            with page.expect_download(timeout=120_000) as event:
                widget.get_by_role("button").click()
                while not event.is_done() and lost.count() == 0:
                    page.wait_for_timeout(200)
                if lost.count():
                    print(f"[e2e] WARNING {button}: {lost.first.inner_text()!r}; clicking again", flush=True)
                    raise PlaywrightTimeout("lost")
        except PlaywrightTimeout:
            continue
        event.value.save_as(to)
        assert to.stat().st_size > 0, f"{button}: an empty download"
        return to
    raise AssertionError(f"{button}: no download after {attempts} clicks")


def nav(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    expect(page.get_by_role("heading", name=title, level=1)).to_be_visible()


def test_browser_end_to_end(app, page, tmp_path):
    url, home = app
    out = tmp_path / "screenshots"
    out.mkdir()
    started = last = time.monotonic()
    timings = {}

    def lap(step: str) -> None:
        nonlocal last
        now = time.monotonic()
        timings[step] = now - last
        last = now
        print(f"[e2e] {step}: {timings[step]:.1f} s (total {now - started:.1f} s)", flush=True)

    # ---- New run: BERT, an uploaded CSV, its preview, the demo settings, launch --------------------------------
    page.goto(url)
    expect(page.get_by_role("heading", name="New run", level=1)).to_be_visible()
    page.get_by_text("BERT · text classification", exact=True).click()
    # The first start writes the demo checkpoints (~15 s on 2 cores). The GPT-2 preset's banner shows first: wait
    # for BERT's own, or the steps below race the page's rerun.
    expect(page.get_by_text(re.compile(r"Demo checkpoint\..*MiniLM"))).to_be_visible(timeout=120_000)
    settle(page)
    lap("app up, demo checkpoints ready")

    pick(page, "Training data", "Upload a file")
    csv_path = write_sentiment_csv(tmp_path / "reviews.csv")
    page.locator("input[type=file]").set_input_files(str(csv_path))
    preview = page.get_by_test_id("stMetric").filter(has_text="Examples")
    expect(preview).to_contain_text("240")
    expect(page.get_by_test_id("stMetric").filter(has_text="Classes")).to_contain_text("2")
    expect(page.get_by_test_id("stDataFrame").filter(visible=True).first).to_be_visible()  # the preview
    settle(page)
    # A separate test file, uploaded in the optional expander: scored by the base and the tuned model at the end.
    page.get_by_text("Validation and test data (optional)", exact=True).click()
    for label in ("Validation data", "Test data"):
        expect(page.get_by_test_id("stRadio").filter(has_text=label)).to_be_visible()
    pick(page, "Test data", "Upload a file")
    test_csv = write_sentiment_csv(tmp_path / "held_out_reviews.csv", rows=60, seed=7)
    test_uploader = page.get_by_test_id("stFileUploader").filter(has_text="Test data")
    test_uploader.locator("input[type=file]").set_input_files(str(test_csv))
    expect(page.get_by_text("Test data: 60 examples", exact=True)).to_be_visible()
    settle(page)
    # The demo BERT is MiniLM-L6: its preset (catalog.DEMO_OVERRIDES) fills in settings that train it in under a
    # minute; the form must show them.
    page.get_by_text("Advanced settings", exact=True).click()
    for field, value in DEMO_BERT.items():
        expect(page.get_by_label(field.replace("_", " ").capitalize(), exact=True)).to_have_value(f"{value:g}")
    run_name = page.get_by_label("Run name", exact=True).input_value()
    assert re.fullmatch(r"bert-\d{4}-\d{6}", run_name), run_name
    command = f"finetune/train.py --config {home}/runs/{run_name}/config.yaml"
    code = page.get_by_test_id("stCode").first
    expect(code).to_contain_text(command)
    # The command starts with this environment's accelerate (as the page's Python finds it), wrapped: no sideways
    # scroll to read it.
    accelerate = devices._short(STREAMLIT.with_name("accelerate"))
    shown = " ".join(code.inner_text().split())
    assert shown.startswith(f"{accelerate} launch --config_file "), shown
    assert code.locator("pre").first.evaluate("el => el.scrollWidth <= el.clientWidth + 1"), "the command scrolls"
    # The time estimate shows before Launch: a caption, or a warning box past 30 min.
    estimate = page.get_by_text(re.compile(r"^Estimated training time: about \S")).first
    expect(estimate).to_be_visible()
    launch_button = page.get_by_role("button", name="Launch run")
    assert estimate.bounding_box()["y"] < launch_button.bounding_box()["y"], "the estimate is below Launch"
    settle(page)
    lap("upload and preview")
    shoot(page, out, "new_run")

    page.get_by_role("button", name="Launch run").click()
    expect(page.get_by_text(f"Run {run_name} is queued")).to_be_visible()
    # What the form held is what the trainer gets.
    config = yaml.safe_load((home / "runs" / run_name / "config.yaml").read_text())
    assert {field: config[field] for field in DEMO_BERT} == DEMO_BERT, config
    assert config["train_file"].startswith(f"{home}/uploads/") and config["task"] == "text-classification", config
    assert Path(config["train_file"]).name == "upload.csv", "stored under a name the app chose"
    assert config["test_file"].startswith(f"{home}/uploads/") and config["test_file"] != config["train_file"], config
    assert not config.get("validation_file"), config
    lap("launched")

    # ---- Runs: wait for "finished", with curves and the base vs fine-tuned table ----------------------------
    nav(page, "Runs")
    progress = page.get_by_test_id("stProgress").first  # the run's; a merged build's shows below the buttons
    seen, changed_at = None, time.monotonic()
    while True:
        label = progress.inner_text() if progress.count() else ""
        if "finished" in label:
            break
        if label != seen:
            seen, changed_at = label, time.monotonic()
        if "failed" in label or "cancelled" in label or time.monotonic() - changed_at > STALL_S:
            logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(home.rglob("*.log")))
            pytest.fail(f"run {run_name} made no progress for {STALL_S} s or ended (progress: {label!r})\n{logs}")
        page.wait_for_timeout(1000)
    lap(f"training (queued -> finished): {label.strip()}")
    # The page's buttons (Cancel / Download) are drawn outside the refreshing fragment, so they show the state of
    # the last full run of the page: open Runs again to see the finished run's buttons.
    nav(page, "Runs")
    expect(progress).to_contain_text("finished")
    expect(page.get_by_test_id("stVegaLiteChart")).to_have_count(2)  # losses; accuracy and f1
    # The base vs fine-tuned scores on the validation split, and beside them on the test file.
    for title in ("On the validation split", "On the test file"):
        scores = page.get_by_test_id("stColumn").filter(has_text=title).get_by_test_id("stTable")
        expect(scores).to_contain_text("fine-tuned")
        expect(scores).to_contain_text("accuracy")
    settle(page)
    lap("runs page")

    # The adapter zip's model card names the data as uploaded, and no bare local folder as the base model.
    adapter = download(page, "Download adapter (.zip)", tmp_path / "adapter.zip")
    with zipfile.ZipFile(adapter) as archive:
        names = archive.namelist()
        assert f"{run_name}/adapter_config.json" in names, names
        card = archive.read(f"{run_name}/README.md").decode()
    assert "Trained on `reviews.csv`" in card and "name: reviews.csv" in card, card
    # Nothing of this server travels with the card: no path of its uploads, no name the app gave them.
    assert "upload.csv" not in card and str(home) not in card, card
    bare = Path(config["model_name_or_path"]).name  # the demo checkpoint's folder
    assert re.findall(r'^BASE = "([^"]*)"', card, re.M) == [f"<path to {bare}>"], card  # a placeholder to replace
    assert not re.search(rf"^base_model:\s*{re.escape(bare)}\s*$", card, re.M), card
    settle(page)
    lap("adapter zip and its card")

    # The merged model: built in the background with its progress (the demo BERT may finish before it shows), then
    # downloaded; it loads with plain from_pretrained, so it holds a config and the weights.
    page.get_by_role("button", name="Build merged model (.zip)").click()
    building = page.get_by_text(re.compile("Building the merged model"))
    ready = page.get_by_role("button", name="Download merged model (.zip)")
    expect(building.or_(ready).first).to_be_visible(timeout=60_000)
    print(f"[e2e] merged build progress seen: {building.count() > 0}", flush=True)
    expect(ready).to_be_visible(timeout=300_000)
    settle(page)
    merged = download(page, "Download merged model (.zip)", tmp_path / "merged.zip")
    with zipfile.ZipFile(merged) as archive:
        names = archive.namelist()
    assert f"{run_name}-merged/config.json" in names, names
    assert any(n.startswith(f"{run_name}-merged/") and n.endswith(".safetensors") for n in names), names
    assert not any("adapter_config.json" in n for n in names), names
    settle(page)
    lap(f"merged model built and downloaded ({merged.stat().st_size / 2**20:.0f} MiB)")
    shoot(page, out, "runs")

    # ---- An early-stopped run reads as finished at its step, not as stalled ------------------------------------
    early = home / "runs" / f"{run_name}-early"
    shutil.copytree(home / "runs" / run_name, early)
    status = json.loads((early / "status.json").read_text())
    (early / "status.json").write_text(json.dumps({**status, "stopped_early_at_step": 2, "queued_at": time.time()}))
    nav(page, "Runs")
    choose(page, "Run", early.name)
    expect(progress).to_contain_text("stopped early at step 2")

    # ---- Compare: two runs; base / fine-tuned / change visible without scrolling at 1280 px ------------------
    page.set_viewport_size({"width": 1280, "height": VIEWPORT["height"]})
    nav(page, "Compare")
    table = page.get_by_test_id("stMarkdownContainer").locator("table").first
    expect(table).to_contain_text(run_name)
    expect(table).to_contain_text(early.name)
    box = page.get_by_test_id("stMain").bounding_box()
    for header in ("acc base", "acc tuned", "acc Δ", "loss Δ"):
        cell = table.locator("th", has_text=header).first.bounding_box()
        assert cell["x"] + cell["width"] <= box["x"] + box["width"], f"{header} is off-screen at 1280 px"
    assert table.evaluate("t => t.parentElement.scrollWidth <= t.parentElement.clientWidth + 1"), "no sideways scroll"
    page.set_viewport_size(VIEWPORT)
    headers = table.locator("th").all_inner_texts()
    assert "acc tuned" in headers, headers
    column = headers.index("acc tuned")
    row = table.locator("tbody tr").filter(has_text=run_name)
    accuracy = row.locator("td, th").nth(column).inner_text()
    assert 0.0 <= float(accuracy) <= 1.0, accuracy
    print(f"[e2e] {run_name}: fine-tuned accuracy {accuracy}", flush=True)
    # The scores on the test file, in their own table under the headline.
    expect(page.get_by_text(re.compile(r"^On the test file")).first).to_be_visible()
    test_table = page.get_by_test_id("stMarkdownContainer").locator("table").nth(1)
    expect(test_table).to_contain_text(run_name)
    expect(page.get_by_text("Confusion matrices", exact=False)).to_be_visible()
    settle(page)
    lap("compare")
    shoot(page, out, "compare")

    # ---- Playground: classify a sentence with the trained adapter -----------------------------------------
    nav(page, "Playground")
    page.get_by_label("Text", exact=True).fill("the acting was wonderful")
    page.get_by_role("button", name="Classify").click()
    prediction = page.get_by_test_id("stMetric").filter(has_text="Prediction")
    expect(prediction).to_contain_text(re.compile(r"positive|negative"), timeout=120_000)
    settle(page)
    lap("playground")
    shoot(page, out, "playground")

    # ---- New run again: integer labels in any range (scores 1-5) preview as five classes, with no error ------
    nav(page, "New run")
    pick(page, "Training data", "Upload a file")
    scores = tmp_path / "scores.csv"
    scores.write_text("review,score\n" + "".join(f"review number {i} of the film,{i % 5 + 1}\n" for i in range(60)))
    page.locator("input[type=file]").first.set_input_files(str(scores))
    expect(page.get_by_test_id("stMetric").filter(has_text="Classes")).to_contain_text("5")
    expect(page.get_by_test_id("stException")).to_have_count(0)
    lap("integer labels 1-5")

    assert sorted(p.name for p in out.iterdir()) == ["compare.png", "new_run.png", "playground.png", "runs.png"]
    print(f"[e2e] total {time.monotonic() - started:.1f} s; screenshots in {out}", flush=True)
