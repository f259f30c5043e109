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

    browser
        .click_to_next_page(&browser.find("a[href='/students/2']").await)
        .await;
    assert_eq!(
        browser.text(&browser.find("h1").await).await,
        "Bruce Banner"
    );

    browser
        .type_into(&browser.find("input[name=title]").await, "Gamma lab report")
        .await;
    browser
        .click(
            &browser
                .find("select[name=type] option:nth-of-type(3)")
                .await,
        )
        .await;
    browser
        .type_into(&browser.find("input[name=score]").await, "93.5")
        .await;
    browser
        .click_to_next_page(&browser.find("button[type=submit]").await)
        .await;

    // The form posts, the portal answers 303, the browser lands back on the student's page.
    assert!(
        browser.current_url().await.ends_with("/students/2"),
        "{}",
        browser.current_url().await
    );
    let rows = browser.texts("tbody tr").await;
    assert!(
        rows.iter()
            .any(|row| row == "Gamma lab report Homework 93.5"),
        "{rows:?}"
    );

    // A bad score comes back as the same form with the message, keeping what was typed.
    browser
        .type_into(&browser.find("input[name=title]").await, "Too good")
        .await;
    browser
        .type_into(&browser.find("input[name=score]").await, "150")
        .await;
    browser
        .click_to_next_page(&browser.find("button[type=submit]").await)
        .await;
    let alert = browser.text(&browser.find("[role=alert]").await).await;
    assert!(alert.contains("score"), "{alert}");
    browser.quit().await;

    // And the grade is really stored in grading, not just shown.
    let student: serde_json::Value = client()
        .get(format!("{}/students/2", grading.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let titles: Vec<&str> = student["grades"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["title"].as_str().unwrap())
        .collect();
    assert!(titles.contains(&"Gamma lab report"), "{titles:?}");
    assert!(!titles.contains(&"Too good"));
}
