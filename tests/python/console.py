"""Drives the web console in headless Chromium (Playwright) against a running `shoal serve`.

Usage: console.py BASE_URL TOKENS_JSON SCREENSHOT_DIR FUNNEL_FROM FUNNEL_TO [PACK_PREFIX]

Walks what an operations person does — sign in, build a three-condition audience, save it as
a dynamic pack, compose a set expression, run a funnel, open the ROI and retention views, the
SQL editor and the catalog, then sign in as a viewer through `/?token=` — writing a screenshot
of each page. Prints what the pages showed as JSON; the Rust test compares it with the API.
"""

import json
import os
import re
import shutil
import sys

from playwright.sync_api import sync_playwright, expect

base, tokens, shots, funnel_from, funnel_to = sys.argv[1:6]
prefix = sys.argv[6] if len(sys.argv) > 6 else "console"
men, combo = f"{prefix}_men", f"{prefix}_combo"
tokens = json.loads(tokens)
os.makedirs(shots, exist_ok=True)
seen = {}


def chromium_path():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no Chromium found (scripts/test installs Debian's chromium)")


def shot(page, name):
    page.screenshot(path=os.path.join(shots, f"{name}.png"), full_page=True)


def settled_count(page, testid):
    """The number a live count shows once it stops changing."""
    locator = page.get_by_test_id(testid)
    expect(locator).not_to_have_attribute("data-count", "", timeout=20000)
    page.wait_for_timeout(700)
    expect(page.get_by_text("counting…")).to_have_count(0, timeout=20000)
    return int(locator.get_attribute("data-count"))


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="en-US")
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # Sign in with the form (keyboard only: type the token, press Enter).
    page.goto(base + "/")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    shot(page, "01-sign-in")
    page.get_by_label("API token").fill("not-a-token")
    page.get_by_label("API token").press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("unknown or revoked")
    page.get_by_label("API token").fill(tokens["analyst"])
    page.get_by_label("API token").press("Enter")
    expect(page.get_by_role("navigation", name="Pages")).to_be_visible()
    seen["analyst_nav"] = page.get_by_role("navigation", name="Pages").inner_text().split("\n")

    # Audience builder: gender = male, age between 25 and 44, viewed an item in the last 30 days.
    page.goto(base + "/#/builder")
    add_field = page.get_by_role("button", name="+ field")
    add_field.click()
    conditions = page.get_by_test_id("condition")
    expect(conditions).to_have_count(1)
    first = conditions.nth(0)
    first.get_by_label("field", exact=True).select_option("gender")
    first.get_by_label("operator").select_option("eq")
    first.get_by_label("value", exact=True).select_option("male")
    add_field.click()
    second = conditions.nth(1)
    second.get_by_label("field", exact=True).select_option("age")
    second.get_by_label("operator").select_option("between")
    second.get_by_label("from", exact=True).fill("25")
    second.get_by_label("to", exact=True).fill("44")
    page.get_by_role("button", name="+ event").click()
    third = conditions.nth(2)
    third.get_by_label("event", exact=True).select_option("view_item")
    third.get_by_label("window").select_option("last")
    third.get_by_label("days").fill("30")
    seen["builder_count"] = settled_count(page, "count")
    seen["builder_meta"] = page.get_by_test_id("count-meta").inner_text()
    page.get_by_text("Condition JSON").click()
    seen["builder_tree"] = json.loads(page.get_by_test_id("tree-json").inner_text())
    page.get_by_role("button", name="Preview members").click()
    expect(page.get_by_test_id("preview")).to_be_visible()
    shot(page, "02-builder")

    # Save as a dynamic pack; the cron picker previews the schedule in words.
    page.get_by_role("button", name="Save as audience").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Name").fill(men)
    dialog.get_by_label("dynamic — refreshed on a schedule").check()
    dialog.get_by_role("button", name="every day at 03:00").click()
    dialog.get_by_label("Time zone").fill("Asia/Shanghai")
    expect(dialog.get_by_test_id("schedule-preview")).to_contain_text("03:00")
    seen["schedule_preview"] = dialog.get_by_test_id("schedule-preview").inner_text()
    shot(page, "03-save-dialog")
    dialog.get_by_role("button", name="Save", exact=True).click()
    expect(page).to_have_url(re.compile(f"#/audiences/{men}$"))
    expect(page.get_by_test_id("pack-size")).not_to_have_text("–")
    seen["saved_size"] = int(page.get_by_test_id("pack-size").inner_text().replace(",", ""))
    expect(page.get_by_test_id("chart")).to_be_visible()
    shot(page, "04-audience-detail")

    # Export dialog: what each column becomes for this role.
    page.get_by_role("button", name="Export…").click()
    export = page.get_by_role("dialog")
    seen["analyst_export_phone"] = export.locator("[data-column=phone] em").inner_text()
    shot(page, "05-export-dialog")
    export.get_by_role("button", name="Close").click()

    # Lookalike of the saved pack: 50 more people, with the holdout check.
    page.get_by_role("button", name="Lookalike…").click()
    look = page.get_by_role("dialog")
    look.get_by_label("Name").fill(f"{prefix}_like")
    look.get_by_label("expand by").select_option("size")
    look.get_by_label("amount").fill("50")
    look.get_by_role("button", name="Create").click()
    expect(look.get_by_test_id("lookalike-report")).to_be_visible(timeout=60000)
    seen["lookalike_report"] = look.get_by_test_id("lookalike-report").inner_text()
    shot(page, "05b-lookalike-dialog")
    look.get_by_role("button", name="Close").click()

    # Set algebra: drag console_men into ∪, then over_40 into −.
    page.goto(base + "/#/audiences")
    expect(page.get_by_test_id("audiences")).to_contain_text(men)
    page.locator(f".chip[data-pack={men}]").drag_to(page.locator(".drop[data-op='|']"))
    page.locator(".chip[data-pack=over_40]").drag_to(page.locator(".drop[data-op='-']"))
    expect(page.get_by_test_id("expr")).to_have_text(f"{men} - over_40")
    seen["composed_expr"] = page.get_by_test_id("expr").inner_text()
    seen["composed_count"] = settled_count(page, "composed-count")
    page.get_by_placeholder("name of the new pack").fill(combo)
    page.get_by_role("button", name="Save as audience").click()
    expect(page.get_by_test_id("saved-link")).to_be_visible()
    shot(page, "06-audiences")

    # Upload a list of phones; the dialog reports what matched.
    upload = os.environ.get("SHOAL_UPLOAD_FILE")
    if upload:
        page.get_by_role("button", name="+ Upload a list").click()
        up = page.get_by_role("dialog")
        up.get_by_label("Name").fill(f"{prefix}_crm")
        up.get_by_label("File").set_input_files(upload)
        up.get_by_role("button", name="Upload").click()
        expect(up.get_by_test_id("match-report")).to_be_visible()
        seen["upload_report"] = {
            key: int(up.locator(f"dd[data-key={key}]").inner_text().replace(",", ""))
            for key in ("rows", "matched", "unmatched", "invalid", "duplicates")
        }
        shot(page, "06b-upload-dialog")
        up.get_by_role("button", name="Close").click()

    # Funnel: view_item → add_to_cart → purchase within 7 days over the given days.
    page.goto(base + "/#/reports/funnel")
    page.get_by_label("step 1", exact=True).select_option("view_item")
    page.get_by_label("step 2", exact=True).select_option("add_to_cart")
    page.get_by_label("step 3", exact=True).select_option("purchase")
    page.get_by_label("from", exact=True).fill(funnel_from)
    page.get_by_label("to", exact=True).fill(funnel_to)
    page.get_by_role("button", name="Run").click()
    expect(page.get_by_test_id("funnel-steps")).to_be_visible()
    seen["funnel_users"] = [int(c.get_attribute("data-users")) for c in page.locator("[data-users]").all()]
    shot(page, "07-funnel")

    # Campaign funnel and ROI: the newest campaign with its delivery days, default values.
    page.goto(base + "/#/reports/roi")
    expect(page.locator("input[name=campaign]")).not_to_have_value("", timeout=20000)
    seen["roi_campaign"] = page.locator("input[name=campaign]").input_value()
    seen["roi_from"] = page.get_by_label("from", exact=True).input_value()
    seen["roi_to"] = page.get_by_label("to", exact=True).input_value()
    page.get_by_role("button", name="Run").click()
    expect(page.get_by_test_id("roi")).to_be_visible()
    seen["roi"] = {
        "target": page.get_by_test_id("roi-target").inner_text(),
        "reached": page.get_by_test_id("roi-reached").inner_text(),
        "converted": page.get_by_test_id("roi-converted").inner_text(),
        "cost": page.get_by_test_id("roi-cost").inner_text(),
        "roi": page.get_by_test_id("roi-value").inner_text(),
        "terms": page.get_by_test_id("roi-terms").inner_text(),
    }
    shot(page, "08-roi")

    # Keep it as a saved report; the saved reports tab shows its stored rows.
    page.get_by_label("report name").fill(f"{prefix}_roi")
    page.get_by_role("button", name="Save report").click()
    expect(page.get_by_test_id("report-saved")).to_contain_text("version 1", timeout=20000)
    page.goto(base + "/#/reports/saved")
    page.locator(f"[data-testid=saved-reports] tr[data-name={prefix}_roi] button.link").click()
    saved_rows = page.get_by_test_id("saved-rows")
    expect(saved_rows).to_be_visible()
    headers = [h.inner_text() for h in saved_rows.locator("thead th").all()]
    cells = [c.inner_text() for c in saved_rows.locator("tbody tr").first.locator("td").all()]
    seen["saved_roi_row"] = dict(zip(headers, cells))
    shot(page, "08b-saved-reports")

    page.goto(base + "/#/reports/retention")
    page.get_by_role("button", name="Run").click()
    expect(page.get_by_test_id("retention")).to_be_visible()
    seen["retention_rows"] = page.get_by_test_id("retention").locator("tbody tr").count()
    shot(page, "09-retention")

    page.goto(base + "/#/sql")
    page.get_by_label("SQL query").fill("SELECT count(*) AS people FROM users WHERE rb_contains(audience('" + men + "'), user_id)")
    page.get_by_label("SQL query").press("Control+Enter")
    expect(page.get_by_test_id("sql-results")).to_be_visible()
    seen["sql_people"] = int(page.get_by_test_id("sql-results").locator("tbody td").first.inner_text())
    shot(page, "10-sql")

    page.goto(base + "/#/catalog")
    expect(page.get_by_test_id("catalog-fields")).to_contain_text("phone")
    shot(page, "11-catalog")

    # Chinese UI.
    page.get_by_role("button", name="中文", exact=True).click()
    seen["zh_nav"] = page.get_by_role("navigation").first.inner_text().split("\n")
    shot(page, "12-catalog-zh")
    page.get_by_role("button", name="EN", exact=True).click()
    seen["errors_analyst"] = errors[:]

    # A viewer signs in through /?token=…, which leaves the address bar.
    viewer = browser.new_context(viewport={"width": 1440, "height": 900}, locale="en-US")
    vpage = viewer.new_page()
    vpage.on("pageerror", lambda e: errors.append(str(e)))
    vpage.goto(base + "/?token=" + tokens["viewer"])
    expect(vpage.get_by_role("navigation", name="Pages")).to_be_visible()
    seen["viewer_url"] = vpage.url
    seen["viewer_nav"] = vpage.get_by_role("navigation", name="Pages").inner_text().split("\n")
    seen["viewer_can_save"] = vpage.get_by_role("button", name="Save as audience").count()
    vpage.get_by_role("button", name="Preview members").click()
    table = vpage.get_by_test_id("preview")
    expect(table).to_be_visible()
    headers = [h.inner_text() for h in table.locator("thead th").all()]
    phone = headers.index("phone")
    seen["viewer_phones"] = [
        row.locator("td").nth(phone).inner_text() for row in table.locator("tbody tr").all()
    ]
    shot(vpage, "13-viewer-builder")
    vpage.goto(base + "/#/audiences/" + men)
    vpage.get_by_role("button", name="Export…").click()
    seen["viewer_export_phone"] = vpage.get_by_role("dialog").locator("[data-column=phone] em").inner_text()
    seen["viewer_can_refresh"] = vpage.get_by_role("button", name="Refresh now").count()
    shot(vpage, "14-viewer-export")
    seen["errors"] = errors
    browser.close()

print(json.dumps(seen, ensure_ascii=False))
