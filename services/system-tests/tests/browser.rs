//! The portal driven by a real headless Chromium (Debian's chromium and chromedriver): what a
//! teacher does, click by click, against the real services and a real Consul agent.

use system_tests::{Gradebook, PATIENCE, client};
use testkit::{Browser, eventually, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teacher_opens_a_student_and_adds_a_grade_in_the_browser() {
    let gradebook = Gradebook::new().await;
    let grading = gradebook.start_grading("grading", free_port()).await;
    let portal = gradebook.start_portal().await;
    eventually("the portal sees grading", PATIENCE, || async {
        let response = client()
            .get(format!("{}/", portal.base_url()))
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(())
    })
    .await;

    let browser = Browser::start().await;
    browser.goto(&format!("{}/", portal.base_url())).await;
    assert_eq!(browser.title().await, "Students · Gradebook");
    let names = browser.texts("tbody td a").await;
    assert!(names.contains(&"Bruce Banner".to_owned()), "{names:?}");

    browser.follow("a[href='/students/2']").await;
    assert_eq!(browser.text_of("h1").await, "Bruce Banner");

    browser.fill("input[name=title]", "Gamma lab report").await;
    browser
        .click(
            &browser
                .find("select[name=type] option:nth-of-type(3)")
                .await,
        )
        .await;
    browser.fill("input[name=score]", "93.5").await;
    browser.follow("button[type=submit]").await;

    // The form posts, the portal answers 303, the browser lands back on the student's page.
    assert!(
        browser.current_url().await.ends_with("/students/2"),
        "{}",
        browser.current_url().await
    );
    let rows = browser.texts("tbody tr").await;
    assert!(
        rows.iter()
            .any(|row| row.starts_with("Gamma lab report Homework 93.5")),
        "{rows:?}"
    );

    // A bad score comes back as the same form with the message, keeping what was typed.
    browser.fill("input[name=title]", "Too good").await;
    browser.fill("input[name=score]", "150").await;
    browser.follow("button[type=submit]").await;
    let alert = browser.text_of("[role=alert]").await;
    assert!(alert.contains("score"), "{alert}");
    browser.quit().await;

    // And the grade is really stored in grading, not just shown.
    let titles: Vec<String> = stored_grades(&grading, 2)
        .await
        .into_iter()
        .map(|(_, title)| title)
        .collect();
    assert!(
        titles.contains(&"Gamma lab report".to_owned()),
        "{titles:?}"
    );
    assert!(!titles.contains(&"Too good".to_owned()));
}

/// The grades of student `id` as grading stores them (id and title), to check that what the
/// browser showed was really stored.
async fn stored_grades(grading: &testkit::ServiceProcess, id: u64) -> Vec<(u64, String)> {
    let student: serde_json::Value = client()
        .get(format!("{}/students/{id}", grading.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    student["grades"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["id"].as_u64().unwrap(),
                g["title"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Where the README's pictures go: `$GRADEBOOK_SCREENSHOTS`, else target/screenshots.
fn screenshot_path(name: &str) -> std::path::PathBuf {
    std::env::var_os("GRADEBOOK_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| system_tests::compose::repo_root().join("target/screenshots"))
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teacher_adds_a_student_changes_and_deletes_a_grade_and_reads_the_logs() {
    let gradebook = Gradebook::new().await;
    let _log = gradebook.start_log("log", free_port()).await;
    let grading = gradebook.start_grading("grading", free_port()).await;
    let portal = gradebook.start_portal().await;
    eventually("the portal sees grading and log", PATIENCE, || async {
        let home = client()
            .get(format!("{}/", portal.base_url()))
            .send()
            .await
            .ok()?;
        let logs = client()
            .get(format!("{}/logs", portal.base_url()))
            .send()
            .await
            .ok()?;
        (home.status() == 200 && logs.status() == 200).then_some(())
    })
    .await;
    let browser = Browser::start().await;
    let flash = || async { browser.text_of("[role=status]").await };

    // A new student, from the form under the list.
    browser.goto(&format!("{}/", portal.base_url())).await;
    browser
        .screenshot(&screenshot_path("portal-students.png"))
        .await;
    browser.fill("input[name=first_name]", "Wanda").await;
    browser.fill("input[name=last_name]", "Maximoff").await;
    browser.follow("button[type=submit]").await;
    assert!(browser.current_url().await.ends_with("/students/5"));
    assert_eq!(browser.text_of("h1").await, "Wanda Maximoff");
    assert_eq!(flash().await, "Student added.");
    // The message is shown once: a reload no longer has it.
    browser.goto(&browser.current_url().await).await;
    assert!(!browser.page_source().await.contains("Student added."));

    // Change one of Bruce's grades.
    browser
        .goto(&format!("{}/students/2", portal.base_url()))
        .await;
    browser.follow("a[href='/students/2/grades/4/edit']").await;
    assert_eq!(browser.text_of("h1").await, "Change a grade");
    browser.fill("input[name=title]", "Quiz 1 (retake)").await;
    browser.fill("input[name=score]", "99").await;
    browser
        .screenshot(&screenshot_path("portal-edit-grade.png"))
        .await;
    browser.follow("button[type=submit]").await;
    assert!(browser.current_url().await.ends_with("/students/2"));
    assert_eq!(flash().await, "Grade changed.");
    let rows = browser.texts("tbody tr").await;
    assert!(
        rows.iter()
            .any(|row| row.starts_with("Quiz 1 (retake) Quiz 99")),
        "{rows:?}"
    );

    // Delete another, after the question.
    browser
        .follow("a[href='/students/2/grades/5/delete']")
        .await;
    assert_eq!(browser.text_of("h1").await, "Delete this grade?");
    browser
        .screenshot(&screenshot_path("portal-delete-grade.png"))
        .await;
    browser.follow("button[type=submit]").await;
    assert_eq!(flash().await, "Grade deleted.");
    browser
        .screenshot(&screenshot_path("portal-student.png"))
        .await;
    let grades = stored_grades(&grading, 2).await;
    assert_eq!(
        grades,
        [(4, "Quiz 1 (retake)".to_owned()), (6, "Test 1".to_owned())]
    );

    // Grading's own records of those changes, on the logs page, fields apart from the message.
    browser
        .goto(&format!(
            "{}/logs?service=grading&level=info",
            portal.base_url()
        ))
        .await;
    let messages = eventually(
        "the logs page shows grading's records",
        PATIENCE,
        || async {
            browser.goto(&browser.current_url().await).await;
            let messages = browser.texts("td.message").await;
            messages
                .iter()
                .any(|m| m.starts_with("grade deleted"))
                .then_some(messages)
        },
    )
    .await;
    assert!(
        messages
            .iter()
            .any(|m| m.contains("grade changed") && m.contains("student")),
        "{messages:?}"
    );
    let fields = browser.texts("td.message dl.fields dt").await;
    assert!(fields.contains(&"student".to_owned()), "{fields:?}");
    browser
        .screenshot(&screenshot_path("portal-logs.png"))
        .await;

    browser.goto(&format!("{}/status", portal.base_url())).await;
    browser
        .screenshot(&screenshot_path("portal-status.png"))
        .await;
    browser.quit().await;
}
