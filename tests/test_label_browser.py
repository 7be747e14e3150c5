"""The ranking page in a real headless browser (Debian's Chromium through Selenium).

Rank three groups with the keyboard, restart the server and reload the page (it resumes from
the file), undo one, check the rankings file with the project's own loader, and train a reward
model on it. The set-up installs ``chromium`` and ``chromium-driver`` with apt-get when they are
missing; where that is impossible (no root, no network) the test is skipped, saying why.
``ALIGNBENCH_UPDATE_SCREENSHOT=1`` also writes the page's screenshot to docs/label_page.png.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCREENSHOT = Path(__file__).parent.parent / "docs" / "label_page.png"


def _browser_binaries() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installed from Debian if missing; skip if impossible."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found  # type: ignore[return-value]
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium/chromedriver missing and apt-get is not usable here (needs root)")
    command = ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in range(2):
        if attempt:  # an old package list: refresh it once
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode == 0:
            break
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"could not install chromium and chromium-driver with apt-get: {last[0]}")
    return found  # type: ignore[return-value]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """A headless Chromium driven by Selenium."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium, chromedriver = _browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1100,760")
    service = webdriver.ChromeService(executable_path=chromedriver)
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except Exception as exc:  # a browser that cannot start here is a skip, with its reason
        pytest.skip(f"headless chromium did not start: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PageServer:
    """The ranking page served by uvicorn in a thread (what ``python -m alignbench.label`` runs)."""

    def __init__(self, groups_file: Path, out: Path, port: int) -> None:
        import uvicorn

        from alignbench.label.groups import read_groups
        from alignbench.label.order import GroupOrder
        from alignbench.label.server import LabelSession, create_app
        from alignbench.label.store import RankingStore

        groups = read_groups(groups_file)
        self.store = RankingStore(out)
        self.store.acquire()
        session = LabelSession(groups, self.store, GroupOrder(groups, "file"), "tester")
        config = uvicorn.Config(create_app(session), host="127.0.0.1", port=port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the page server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop serving and release the output file."""
        self.server.should_exit = True
        self.thread.join(10)
        self.store.release()


def _groups(path: Path) -> None:
    """Four facts questions, each with the right answer, the abstention and a wrong answer."""
    from alignbench_plugins.facts import ABSTENTION, FactsConfig, FactsTask

    task = FactsTask(FactsConfig(name="facts", num_entities=40))
    lines = []
    for number, row in enumerate(task.splits["rl"].to_list()[:4], start=1):
        wrong = next(w for w in ("paris", "seven", "owl") if w != row["answer"])
        responses = [wrong, row["answer"], ABSTENTION]
        group = {"id": f"g{number}", "prompt": row["prompt"], "responses": responses}
        lines.append(json.dumps(group))
    path.write_text("\n".join(lines) + "\n")


def test_rank_reload_undo_and_train(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    groups_file, out = tmp_path / "groups.jsonl", tmp_path / "rankings.jsonl"
    _groups(groups_file)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    wait = WebDriverWait(driver, 20)

    def progress(text: str) -> None:
        wait.until(lambda d: d.find_element(By.ID, "progress").text.startswith(text))

    def press(keys: str) -> None:
        body = driver.find_element(By.TAG_NAME, "body")
        for key in keys:
            body.send_keys(key)

    server = PageServer(groups_file, out, port)
    try:
        driver.get(url)
        progress("0 of 4 done")
        assert driver.find_element(By.ID, "annotator").get_attribute("value") == "tester"
        # Keys pick responses best first; the last one fills itself in; Enter saves.
        for keys, done in (("21", 1), ("32", 2), ("23", 3)):
            wait.until(lambda d: d.find_element(By.ID, "response-1").is_displayed())
            press(keys)
            wait.until(lambda d: d.find_element(By.ID, "submit").is_enabled())
            press("\ue007")  # Enter
            progress(f"{done} of 4 done")
        assert "per label" in driver.find_element(By.ID, "timing").text
    finally:
        server.stop()
    # A new server on the same file (as after a crash or a closed tab), and the page reloaded.
    server = PageServer(groups_file, out, port)
    try:
        driver.refresh()
        progress("3 of 4 done")
        group_four = driver.find_element(By.ID, "prompt").text
        press("u")
        progress("2 of 4 done")
        wait.until(lambda d: d.find_element(By.ID, "prompt").text != group_four)
        assert "Undone" in driver.find_element(By.ID, "message").text
        press("2")  # a half-made ranking, for the screenshot
        shot = tmp_path / "label_page.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("ALIGNBENCH_UPDATE_SCREENSHOT") == "1":
            shutil.copy(shot, SCREENSHOT)
    finally:
        server.stop()

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["group_id"] for x in lines] == ["g1", "g2"]
    assert [x["ranking"] for x in lines] == [[1, 0, 2], [2, 1, 0]]
    assert all(x["annotator"] == "tester" and x["seconds"] > 0 for x in lines)
    _trains_a_reward_model(out)


def _trains_a_reward_model(rankings: Path) -> None:
    """The file is what feedback=file reads, and the reward model learns its rankings."""
    import torch

    from alignbench.config import ModelConfig, RMStageConfig
    from alignbench.models import ScalarHeadModel, build_model, build_tokenizer
    from alignbench.reward_model import ranking_accuracy, score_groups, train_reward_model
    from alignbench_plugins.facts import FactsConfig, FactsTask
    from alignbench_plugins.feedback import FileConfig, FileFeedback

    task = FactsTask(FactsConfig(name="facts", num_entities=40))
    groups = FileFeedback(FileConfig(name="file", path=str(rankings)), task).load_groups()
    assert len(groups) == 2 and all(g.gold is not None for g in groups)  # task questions
    tokenizer = build_tokenizer(task.vocabulary())
    torch.manual_seed(0)
    config = ModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    model = ScalarHeadModel(build_model(config, tokenizer))
    cfg = RMStageConfig(epochs=60, lr=3e-3, batch_size=2, patience=0)
    stats = train_reward_model(model, tokenizer, groups, cfg)
    accuracy = ranking_accuracy(score_groups(model, tokenizer, groups), groups)
    assert stats["final_loss"] < 0.5 and accuracy["accuracy_labels"] == 1.0
