"""The Prefect UI in a real browser (Debian's chromium, driven by Playwright) against a real served
Prefect server with a process worker: save endpoint blocks, start a migration from the deployment
page with a custom parameter, watch it finish, and approve a cutover in the UI.

Screenshots of every step go to tests/output/test_ui/.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from mongo_migrate.deployments.deploy import DESTINATION_BLOCK, SOURCE_BLOCK
from tests.conftest import assert_same_documents
from tests.served import FINAL_STATES, OUTPUT, served_prefect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SHOTS = OUTPUT / "test_ui"
RUN_TIMEOUT_MS = 240_000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with served_prefect(tmp_path_factory.mktemp("served-ui"), "test_ui") as s:
        yield s


@pytest.fixture(autouse=True)
def screenshot_on_failure(request):
    """A failing step leaves a picture of what the browser showed."""
    failed_before = request.session.testsfailed
    yield
    browser_page = request.node.funcargs.get("page")
    if browser_page is not None and request.session.testsfailed > failed_before:
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser_page.screenshot(path=SHOTS / f"failed-{request.node.name}.png")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run tests/ensure_chromium.sh (make test does)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    with sync_playwright() as p:
        # a fresh profile directory for every run of the module
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM,
            headless=True, args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000},
        )
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(30_000)
        # the API calls the UI saw fail, for the record when a step goes wrong
        failed_calls = (SHOTS / "api-errors.log").open("w")

        def record(response) -> None:
            if "/api/" in response.url and response.status >= 400:
                FAILED_CALLS.append((response.status, response.request.method, response.url))
                failed_calls.write(f"{response.status} {response.request.method} {response.url} "
                                   f"{response.request.post_data or ''}\n{response.text()[:2000]}\n")
                failed_calls.flush()

        page.on("response", record)
        yield page
        failed_calls.close()
        context.close()


FAILED_CALLS: list[tuple[int, str, str]] = []  # (status, method, url) of API calls the UI saw fail


def click_until_accepted(page, button, request: str, accepted, attempts: int = 3) -> None:
    """Click, then wait for `accepted()`; click again when the server answered that very request
    503, as a person would. Prefect's server on SQLite answers 503 when its database is busy
    ("database is locked"); its Python clients retry, its UI does not."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(1, attempts + 1):
        before = len(FAILED_CALLS)
        button.click()
        try:
            accepted()
            return
        except PlaywrightTimeout:
            busy = [c for c in FAILED_CALLS[before:] if c[0] == 503 and re.search(request, c[2])]
            if not busy or attempt == attempts:
                raise


class Shots:
    """Numbered screenshots, in the order the steps happen."""

    def __init__(self, page) -> None:
        self.page = page
        SHOTS.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> Path:
        path = SHOTS / f"{len(list(SHOTS.glob('*.png'))) + 1:02d}-{name}.png"
        self.page.screenshot(path=path)
        return path


def save_block_in_ui(page, served, shot, name: str, uri: str) -> None:
    """Blocks > MongoEndpoint > Create: the block name and the connection URI."""
    page.goto(f"{served.ui}/blocks/catalog/mongoendpoint/create")
    form = page.locator("form.block-schema-create-form")
    form.locator(".p-label", has=page.locator("label", has_text="Block Name")).locator("input").fill(name)
    uri_field = form.locator(".schema-form-property-any-of",
                             has=page.locator("h3", has_text=re.compile("^Connection URI$")))
    uri_field.locator("textarea").fill(uri)
    shot(f"block-{name}-form")
    click_until_accepted(page, page.get_by_role("button", name="Create", exact=True), r"/block_documents/$",
                         lambda: page.wait_for_url(re.compile(r"/blocks/block/[0-9a-f-]{36}")))
    page.get_by_text(name).first.wait_for()
    shot(f"block-{name}-saved")


def form_property(page, label: str):
    """A field of the flow-run form, by its label (the innermost element holding that label)."""
    return page.locator(".schema-form-property", has=page.locator(
        ".schema-form-property__label", has_text=re.compile(f"^{re.escape(label)}( \\(Optional\\))?$"))).last


def open_custom_run_form(page, served, deployment: dict, shot) -> None:
    page.goto(f"{served.ui}/deployments/deployment/{deployment['id']}")
    page.get_by_text("on-demand").first.wait_for()
    shot("deployment-page")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    page.wait_for_url(re.compile(r"/deployments/deployment/[0-9a-f-]{36}/run"))
    form_property(page, "Name mapping").wait_for()


def submit_run_form(page, served, deployment: dict, shot) -> dict:
    before = {r["id"] for r in served.flow_runs(deployments={"id": {"any_": [deployment["id"]]}})}
    click_until_accepted(page, page.get_by_role("button", name="Submit", exact=True), r"/create_flow_run$",
                         lambda: page.wait_for_url(re.compile(r"/deployments/deployment/[0-9a-f-]{36}(\?.*)?$")))
    runs = [r for r in served.flow_runs(deployments={"id": {"any_": [deployment["id"]]}})
            if r["id"] not in before]
    assert len(runs) == 1, "the form did not create one flow run"
    # the Runs tab lists runs sorted by start time: this one shows once it has started
    served.wait_for_state(runs[0]["id"], {"RUNNING", "PAUSED"} | FINAL_STATES)
    page.reload()
    page.locator(f'a[href="/runs/flow-run/{runs[0]["id"]}"]').first.wait_for()
    shot("run-submitted")
    return runs[0]


def open_run_from_list(page, run: dict) -> None:
    """Click the run's name in the list on the page (the deployment's Runs tab, Subflow Runs)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.locator(f'a[href="/runs/flow-run/{run["id"]}"]').first.click()
    except PlaywrightTimeout:
        links = [(a.get_attribute("href"), a.inner_text()) for a in page.locator("a[href*='/flow-run/']").all()]
        raise AssertionError(f"no link to run {run['id']} ({run['name']}) on {page.url}: {links}") from None
    page.wait_for_url(re.compile(f"/runs/flow-run/{run['id']}"))


def header_state(page) -> str:
    return page.locator(".state-badge").first.inner_text().strip()


def test_blocks_saved_and_migration_started_from_the_deployment_page(served, page, src_client,
                                                                    dst_client, source, dest):
    shot = Shots(page)
    src_client.shop.orders.insert_many([{"_id": i, "item": f"sku-{i % 31}", "qty": i % 5}
                                        for i in range(3000)])
    src_client.shop.orders.create_index("item")
    src_client.crm.customers.insert_many([{"name": f"c{i}"} for i in range(40)])

    save_block_in_ui(page, served, shot, SOURCE_BLOCK, source.admin_uri())
    save_block_in_ui(page, served, shot, DESTINATION_BLOCK, dest.admin_uri())
    saved = served.http.post("/block_documents/filter", json={
        "block_types": {"slug": {"any_": ["mongoendpoint"]}}}).json()
    assert {b["name"]: b["data"]["uri"] for b in saved} == {
        SOURCE_BLOCK: source.admin_uri(), DESTINATION_BLOCK: dest.admin_uri()}

    deployment = served.deployment("migrate/on-demand")
    open_custom_run_form(page, served, deployment, shot)
    # the custom parameter: rename shop to shop_ui; the endpoints stay the blocks named by default
    form_property(page, "Name mapping").locator("textarea").fill('{"shop": "shop_ui"}')
    form_property(page, "Name mapping").scroll_into_view_if_needed()
    shot("run-form-name-mapping")
    run = submit_run_form(page, served, deployment, shot)
    spec = run["parameters"]["spec"]
    assert spec["name_mapping"] == {"shop": "shop_ui"}
    assert spec["source"]["block"] == SOURCE_BLOCK and spec["destination"]["block"] == DESTINATION_BLOCK

    open_run_from_list(page, run)
    served.wait_for_state(run["id"], {"RUNNING", "COMPLETED", "FAILED", "CRASHED"})
    page.reload()
    page.locator(".state-badge").first.wait_for()
    page.get_by_text("submitted to infrastructure").first.wait_for()  # the worker's log lines
    shot(f"run-{header_state(page).lower()}")
    final = served.wait_for_state(run["id"], timeout=RUN_TIMEOUT_MS / 1000)
    assert final["state_type"] == "COMPLETED", served.logs(run["id"])[-3000:]
    page.reload()
    page.locator(".state-badge", has_text="Completed").first.wait_for()
    page.get_by_text("Finished in state Completed").first.wait_for()
    assert header_state(page) == "Completed"
    shot("run-completed")

    assert_same_documents(src_client, dst_client, "shop.orders", "shop_ui.orders")
    assert_same_documents(src_client, dst_client, "crm.customers")
    assert "shop" not in dst_client.list_database_names()
    assert "item_1" in dst_client.shop_ui.orders.index_information()

    # the full copy's progress: the overall bar a user finds by its key (collections copied in less
    # than 10 s get no bar of their own: tests/test_artifacts.py has those)
    latest = served.http.get("/artifacts/full-copy-progress/latest").json()
    assert latest["data"] == 100.0
    assert re.fullmatch(r"Full copy: 2 collections, 3,040 of about 3,040 documents, [\d,]+ docs/s, done",
                        latest["description"]), latest["description"]
    page.goto(f"{served.ui}/runs/flow-run/{latest['flow_run_id']}")
    page.get_by_text("Artifacts", exact=True).click()
    for text in ("full-copy-progress", "migration-summary"):
        page.get_by_text(text).first.wait_for()
    shot("full-copy-progress-artifacts")


def test_cutover_approved_in_the_ui(served, page, src_client, dst_client, source, dest):
    """migration_types [full, incremental] from the run form; the sync waits for approval, changes
    keep flowing, a person approves in the Resume form, and the destination equals the source."""
    shot = Shots(page)
    src_client.sales.orders.insert_many([{"_id": i, "total": i * 3, "lines": [i, i + 1]}
                                         for i in range(1000)])
    served.save_endpoint_block(SOURCE_BLOCK, source.admin_uri())
    served.save_endpoint_block(DESTINATION_BLOCK, dest.admin_uri())

    deployment = served.deployment("migrate/on-demand")
    open_custom_run_form(page, served, deployment, shot)
    types = form_property(page, "Migration types")
    types.scroll_into_view_if_needed()
    types.locator(".p-select-button__icon").click()  # opens the multi-select's options
    page.get_by_role("option", name="incremental").click()
    page.keyboard.press("Escape")
    expect(types.locator(".p-select-button__value .p-tag--dismissible")).to_have_text(["full", "incremental"])
    form_property(page, "Name mapping").locator("textarea").fill('{"sales": "sales_v2"}')
    types.scroll_into_view_if_needed()
    shot("incremental-run-form")
    run = submit_run_form(page, served, deployment, shot)
    assert run["parameters"]["spec"]["migration_types"] == ["full", "incremental"]

    paused = served.wait_for_paused_subflow(run["id"], timeout=RUN_TIMEOUT_MS / 1000)
    # the business keeps writing while the migration waits for approval
    src_client.sales.orders.insert_many([{"_id": 1000 + i, "total": -i} for i in range(50)])
    src_client.sales.orders.update_many({"_id": {"$lt": 100}}, {"$push": {"lines": 99}})
    src_client.sales.orders.delete_many({"_id": {"$gte": 900, "$lt": 950}})

    page.goto(f"{served.ui}/runs/flow-run/{run['id']}")
    page.get_by_text("Subflow Runs", exact=True).click()
    open_run_from_list(page, paused)
    page.locator(".state-badge", has_text="Paused").first.wait_for()
    page.get_by_text("ready for cutover").first.wait_for()  # the sync's log line
    shot("sync-paused-for-approval")
    # the delay of the sync, kept current while it waits
    page.get_by_text("Artifacts", exact=True).click()
    page.get_by_text("sync-delay").first.wait_for()
    shot("sync-delay-artifact")

    page.get_by_role("button", name="Resume").click()
    modal = page.locator(".p-modal")
    modal.get_by_text("Approve cutover").wait_for()
    modal.locator(".schema-form-property", has=page.locator(
        ".schema-form-property__label", has_text=re.compile("^Note"))).last.locator("textarea").fill(
        "approved by the UI test")
    assert modal.get_by_role("switch").get_attribute("aria-checked") == "true"
    shot("approval-form")
    click_until_accepted(page, modal.get_by_role("button", name="Submit", exact=True), r"/resume$",
                         lambda: modal.wait_for(state="hidden"))

    final = served.wait_for_state(run["id"], timeout=RUN_TIMEOUT_MS / 1000)
    assert final["state_type"] == "COMPLETED", served.logs(run["id"])[-3000:]
    # logs reach the server in batches after the run's state: wait for the line, not for the state
    deadline = time.monotonic() + 30
    while "cutover approved: approved by the UI test" not in served.logs(paused["id"]) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "cutover approved: approved by the UI test" in served.logs(paused["id"])
    page.goto(f"{served.ui}/runs/flow-run/{run['id']}")
    page.locator(".state-badge", has_text="Completed").first.wait_for()
    page.get_by_text("Finished in state Completed").first.wait_for()
    shot("incremental-run-completed")

    assert src_client.sales.orders.count_documents({}) == 1000
    assert_same_documents(src_client, dst_client, "sales.orders", "sales_v2.orders")

    # the artifacts a user finds by their stable keys on the Artifacts page
    keys = ["full-copy-progress", "precheck", "sync-delay", "verification", "migration-summary"]
    found = {a["key"] for a in served.artifacts(artifacts={"key": {"any_": keys}})}
    assert found == set(keys)
    page.goto(f"{served.ui}/artifacts")
    for key in keys:
        page.get_by_text(key, exact=True).first.wait_for()
    shot("artifacts-by-key")
