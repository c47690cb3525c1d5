//! The HTML report: self-contained, escaped, with a request timeline per load
//! (outages and Kubernetes events on it), rendered by a real headless Chromium.

mod report_fixture;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cdcheck::report::html;
use report_fixture::{
    FAILED_SCENARIO, FEATURE_SCENARIO, MARKUP_FINDING, NOT_GIVEN_REASON, PASSED_SCENARIO,
    SKIP_REASON,
};

fn page() -> String {
    html::to_html(&report_fixture::run_report())
}

/// The text of one scenario's section, up to the next scenario's.
fn section<'a>(page: &'a str, scenario: &str) -> &'a str {
    let start = page
        .find(&format!("id=\"scenario-{scenario}\""))
        .unwrap_or_else(|| panic!("no section for {scenario}"));
    let rest = &page[start..];
    let end = rest
        .find("<details class=\"scenario ")
        .unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn text_from_the_run_is_escaped() {
    let page = page();
    assert!(!page.contains(MARKUP_FINDING));
    assert!(page.contains(
        "the gateway answered 503 with &lt;html&gt;&lt;body&gt;no healthy upstream&lt;/body&gt;&lt;/html&gt;"
    ));
    assert_eq!(
        page.matches("<script>").count(),
        1,
        "only the page's own script"
    );
}

#[test]
fn the_page_fetches_nothing() {
    let page = page();
    for reference in [
        "src=",
        "<link",
        "@import",
        "url(",
        "href=\"http",
        "<iframe",
        "<img",
    ] {
        assert!(!page.contains(reference), "the page references {reference}");
    }
}

#[test]
fn every_load_has_a_timeline_with_its_outages_and_the_scenarios_events() {
    let page = page();
    assert_eq!(page.matches("<svg class=\"timeline\"").count(), 2);

    let failed = section(&page, FAILED_SCENARIO);
    assert!(failed.contains("data-requests=\"2000\" data-failed=\"30\""));
    assert_eq!(failed.matches("<g class=\"outage\"").count(), 1);
    assert!(failed.contains("data-from-ms=\"19410\" data-to-ms=\"19710\""));
    assert!(failed.contains(">outage 300 ms</text>"));
    // The red lane has a tick for the failed requests (one per pixel column).
    let ticks = failed
        .split("class=\"failed-ticks\" d=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    assert!(ticks.matches('M').count() >= 5, "{ticks}");
    for label in [
        ">apply frontend</text>",
        ">rollout-started frontend</text>",
        ">delete frontend-7c9d5b6f4-x2l8q</text>",
        ">rollout-complete frontend</text>",
    ] {
        assert!(failed.contains(label), "no marker {label}");
    }
    assert!(failed.contains("<pre>Events (namespace cdc-zdr-2):"));
    assert!(
        failed.contains(" open>"),
        "a failed scenario opens by default"
    );

    let passed = section(&page, report_fixture::PASSED_SCENARIO);
    assert!(passed.contains("data-kind=\"switch\""));
    assert!(passed.contains(">switch frontend</text>"));
    assert!(!passed.contains("<g class=\"outage\""));
    assert!(passed.contains("class=\"failed-ticks\" d=\"\""));

    let skipped = section(&page, report_fixture::SKIPPED_SCENARIO);
    assert!(skipped.contains(&format!("skipped (no-data-plane): {SKIP_REASON}")));
    assert!(!skipped.contains("<svg"));
}

/// The class and text of the first badge in `html`.
fn first_badge(html: &str) -> (&str, &str) {
    let at = html.find("<span class=\"badge ").expect("a badge");
    let rest = &html[at + "<span class=\"badge ".len()..];
    let class = &rest[..rest.find('"').unwrap()];
    let text = &rest[rest.find('>').unwrap() + 1..rest.find("</span>").unwrap()];
    (class, text)
}

#[test]
fn a_pass_with_skips_is_amber_with_its_skips_never_a_green_pass() {
    let page = html::to_html(&report_fixture::with_skips());
    let bluegreen = section(&page, PASSED_SCENARIO);
    assert!(
        bluegreen.starts_with(&format!("id=\"scenario-{PASSED_SCENARIO}\"")),
        "{}",
        &bluegreen[..80]
    );
    assert_eq!(
        first_badge(bluegreen),
        ("passed-skips", "passed, 3 skipped (no-data-plane)")
    );
    // The scenario's box is not of the `passed` class, whose badges CSS paints green.
    let opening = &page[..page
        .find(&format!("id=\"scenario-{PASSED_SCENARIO}\""))
        .unwrap()];
    assert!(
        opening.ends_with("<details class=\"scenario passed-skips\" "),
        "{}",
        &opening[opening.len() - 60..]
    );
    // In the overview too.
    let overview = &page[page.find("<section class=\"overview\"").unwrap()..];
    let row = &overview[overview.find(&format!(">{PASSED_SCENARIO}</a>")).unwrap()..];
    assert_eq!(
        first_badge(row),
        ("passed-skips", "passed, 3 skipped (no-data-plane)")
    );
    // And in the header's counts: the pass is named apart, in amber.
    let header = &page[..page.find("<section class=\"overview\"").unwrap()];
    assert!(
        header.contains("<span class=\"count skipped\">of which <b>1</b> with skips</span>"),
        "{header}"
    );
    // Control: without skips it is a plain pass.
    let plain = html::to_html(&report_fixture::run_report());
    assert_eq!(
        first_badge(section(&plain, PASSED_SCENARIO)),
        ("passed", "passed")
    );
    assert!(!plain.contains("with skips</span>"));
}

#[test]
fn the_html_header_and_overview_of_a_run_with_skips() {
    let page = html::to_html(&report_fixture::with_skips());
    let start = page.find("<header").unwrap();
    let end = page.find("</section>").unwrap() + "</section>".len();
    // One element a line, for a readable snapshot.
    insta::assert_snapshot!(
        "html_with_skips_header",
        page[start..end].replace("><", ">\n<")
    );
}

#[test]
fn a_scenario_the_pipeline_gives_nothing_for_has_a_banner() {
    let page = html::to_html(&report_fixture::with_skips());
    let header = &page[..page.find("</header>").unwrap()];
    assert!(
        header.contains(&format!(
            "<p class=\"banner not-run\"><a href=\"#scenario-{FEATURE_SCENARIO}\">{FEATURE_SCENARIO}</a> did not run: {NOT_GIVEN_REASON}</p>"
        )),
        "{header}"
    );
    assert!(!html::to_html(&report_fixture::run_report()).contains("banner not-run"));
}

#[test]
fn an_interrupted_run_has_a_banner_and_what_finished() {
    let temp = tempfile::tempdir().unwrap();
    let mut writer = cdcheck::report::FileReporter::new(temp.path());
    for event in report_fixture::interrupted_events(&report_fixture::with_skips(), 3) {
        cdcheck::report::Reporter::event(&mut writer, &event).unwrap();
    }
    let page = std::fs::read_to_string(&writer.written().unwrap().html).unwrap();
    assert!(
        page.contains(&format!(
            "<p class=\"banner interrupted\">Interrupted: 3 of 4 scenarios finished; this report holds those. Not finished: {FEATURE_SCENARIO}.</p>"
        )),
        "{}",
        &page[..page.find("</header>").unwrap()]
    );
    assert!(page.contains("<title>cdcheck: error (interrupted) on local</title>"));
    assert_eq!(page.matches("<details class=\"scenario ").count(), 3);
}

#[test]
fn a_few_very_slow_requests_do_not_flatten_the_chart() {
    let mut report = report_fixture::run_report();
    let timeline = &mut report.scenarios[0].loads[0].timeline;
    timeline[500].latency_ms = 2_000.0;
    let page = html::to_html(&report);
    assert!(page.contains(">1 slower request drawn on the top edge (slowest 2000 ms)</text>"));
    // The scale stops at twice the p99 (about 15 ms), not at 2 s.
    assert!(page.contains(">30 ms</text>"));
    assert!(!page.contains(">2000 ms</text>"));
}

/// Chromium from Debian's package, or `CDCHECK_CHROMIUM`.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CDCHECK_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Takes a 1400×2000 screenshot of `url` with headless Chromium.
fn screenshot(chromium: &Path, url: &str, png: &Path, profile: &Path) {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium exited with {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish the screenshot within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a screenshot shows, in numbers.
#[derive(Debug)]
struct Ink {
    width: u32,
    height: u32,
    /// The share of pixels that differ from the most common colour (the background).
    drawn: f64,
    colours: usize,
    /// Pixels of the timeline's request-dot blue (#2563eb at 55 % over white).
    timeline_dots: usize,
    /// Pixels of the skip background (#fef3c7).
    amber: usize,
}

impl Ink {
    fn of(png: &Path) -> Ink {
        let file = std::io::BufReader::new(std::fs::File::open(png).unwrap());
        let mut decoder = png::Decoder::new(file);
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().unwrap();
        let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buffer).unwrap();
        let channels = info.color_type.samples();
        let mut colours: HashMap<&[u8], usize> = HashMap::new();
        let mut timeline_dots = 0;
        let mut amber = 0;
        for pixel in buffer[..info.buffer_size()].chunks(channels) {
            if pixel[..3] == [0xfe, 0xf3, 0xc7] {
                amber += 1;
            }
            *colours.entry(pixel).or_default() += 1;
            let dot_blue = [135u8, 169, 244];
            if pixel[..3]
                .iter()
                .zip(dot_blue)
                .all(|(a, b)| a.abs_diff(b) <= 12)
            {
                timeline_dots += 1;
            }
        }
        let pixels = (info.width * info.height) as usize;
        let background = colours.values().copied().max().unwrap_or(0);
        Ink {
            width: info.width,
            height: info.height,
            drawn: (pixels - background) as f64 / pixels as f64,
            colours: colours.len(),
            timeline_dots,
            amber,
        }
    }

    /// A report page: text and colour across the page, and a timeline's dots.
    /// (The fixture's screenshot measured 22.6 % drawn, 4140 colours, 12899 dot pixels.)
    fn looks_rendered(&self) -> bool {
        self.drawn > 0.05 && self.colours > 200 && self.timeline_dots > 2000
    }
}

#[test]
fn the_report_renders_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing: .ci/run installs it (apt-get install chromium)"
        );
        // Written straight to stderr, which libtest does not capture: a skip must show.
        let _ = std::io::stderr().write_all(
            b"NOT RUN: the_report_renders_in_headless_chromium (no chromium; set CDCHECK_CHROMIUM or install it)\n",
        );
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    // Kept beside the screenshot, for a person to open.
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report-html");
    let files = cdcheck::report::write_all(&report_fixture::run_report(), &out_dir).unwrap();

    // Every scenario opened (`#all`), as a reader would after "Expand all".
    let shot = out_dir.join("screenshot.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("file://{}#all", files.html.display());
    screenshot(&chromium, &url, &shot, &temp.path().join("profile"));
    let ink = Ink::of(&shot);
    assert_eq!((ink.width, ink.height), (1400, 2000));
    assert!(
        ink.looks_rendered(),
        "the screenshot {} does not look like the report: {ink:?}",
        shot.display()
    );

    // The run with skips: its amber (the skip badges' and banner's background,
    // #fef3c7) must cover more of the page than in the run above, whose only
    // amber is the https scenario's.
    let skips_dir = out_dir.join("with-skips");
    let skips_files =
        cdcheck::report::write_all(&report_fixture::with_skips(), &skips_dir).unwrap();
    let skips_shot = out_dir.join("screenshot-with-skips.png");
    let _ = std::fs::remove_file(&skips_shot);
    screenshot(
        &chromium,
        &format!("file://{}", skips_files.html.display()),
        &skips_shot,
        &temp.path().join("profile-skips"),
    );
    let skips_ink = Ink::of(&skips_shot);
    assert!(skips_ink.looks_rendered(), "{skips_ink:?}");
    assert!(
        skips_ink.amber > ink.amber + 2000,
        "amber pixels: {} with skips, {} without ({})",
        skips_ink.amber,
        ink.amber,
        skips_shot.display()
    );

    // Negative control: the same judgement calls a blank page blank.
    let blank = temp.path().join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let blank_shot = out_dir.join("blank.png");
    screenshot(
        &chromium,
        &format!("file://{}", blank.display()),
        &blank_shot,
        &temp.path().join("profile-blank"),
    );
    let blank_ink = Ink::of(&blank_shot);
    assert!(
        !blank_ink.looks_rendered(),
        "a blank page passes for a report: {blank_ink:?}"
    );
}
