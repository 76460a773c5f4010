//! What the starter does, apart from its window: check the four fields,
//! plan the steps (enroll, then install and start the service) and carry
//! them out through a runner, reporting progress. The window only shows
//! fields and messages; this part is tested on every OS.

// Only the Windows window calls this; elsewhere its tests do.
#![cfg_attr(not(windows), allow(dead_code))]

use std::path::{Path, PathBuf};

/// What the user typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    /// The cloud's address: host or IP, with an optional :port.
    pub cloud: String,
    pub device: String,
    pub password: String,
    /// The cloud's root certificate file (root.pem).
    pub ca: String,
}

/// A field of the form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Cloud,
    Device,
    Password,
    Ca,
}

/// A form whose fields passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub cloud: String,
    pub device: String,
    pub password: String,
    pub ca: PathBuf,
}

/// Checks every field; all the problems at once, each with its field.
pub fn check(
    form: &Form,
    file_exists: impl Fn(&Path) -> bool,
) -> Result<Checked, Vec<(Field, String)>> {
    let mut problems = Vec::new();
    let cloud = form.cloud.trim();
    if cloud.is_empty() {
        problems.push((Field::Cloud, "enter the cloud's address".to_owned()));
    } else if cloud.contains(char::is_whitespace) || cloud.contains('/') {
        problems.push((
            Field::Cloud,
            "the cloud's address is a host name or IP address, with an optional :port".to_owned(),
        ));
    }
    let device = form.device.trim();
    if device.is_empty() {
        problems.push((Field::Device, "enter the device ID".to_owned()));
    } else if !device
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        problems.push((
            Field::Device,
            "a device ID has letters, digits, '-', '_' and '.' only".to_owned(),
        ));
    }
    if form.password.is_empty() {
        problems.push((
            Field::Password,
            "enter the device's one-time password".to_owned(),
        ));
    }
    let ca = PathBuf::from(form.ca.trim());
    if form.ca.trim().is_empty() {
        problems.push((
            Field::Ca,
            "choose the cloud's root certificate (root.pem)".to_owned(),
        ));
    } else if !file_exists(&ca) {
        problems.push((Field::Ca, format!("{} does not exist", ca.display())));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Checked {
        cloud: cloud.to_owned(),
        device: device.to_owned(),
        password: form.password.clone(),
        ca,
    })
}

/// One run of `cyphonic.exe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the window shows while it runs.
    pub title: &'static str,
    pub args: Vec<String>,
    /// Environment for this run only: the password goes here, never on a
    /// command line other processes can read.
    pub env: Vec<(String, String)>,
}

/// Enroll with the password, then install and start the service.
pub fn steps(checked: &Checked, state_dir: &Path) -> Vec<Step> {
    let state = state_dir.display().to_string();
    vec![
        Step {
            title: "Enrolling this device",
            args: vec![
                "node".into(),
                "enroll".into(),
                "--cloud".into(),
                checked.cloud.clone(),
                "--device".into(),
                checked.device.clone(),
                "--ca".into(),
                checked.ca.display().to_string(),
                "--state-dir".into(),
                state.clone(),
            ],
            env: vec![("CYPHONIC_DEVICE_PASSWORD".into(), checked.password.clone())],
        },
        Step {
            title: "Starting the cyphonic service",
            args: vec![
                "node".into(),
                "service".into(),
                "install".into(),
                "--state-dir".into(),
                state,
            ],
            env: Vec::new(),
        },
    ]
}

/// How a run went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The step that failed (its title) and what it said.
    Failed {
        step: &'static str,
        message: String,
    },
}

/// Runs each step through `exec` (which returns the program's output, or
/// its error text), calling `progress` with a line for the window before
/// each and at the end; stops at the first failure.
pub fn run(
    steps: &[Step],
    mut exec: impl FnMut(&Step) -> Result<String, String>,
    mut progress: impl FnMut(String),
) -> Outcome {
    for (i, step) in steps.iter().enumerate() {
        progress(format!("{} ({}/{})...", step.title, i + 1, steps.len()));
        if let Err(message) = exec(step) {
            let message = last_line(&message);
            progress(format!("{} failed: {message}", step.title));
            return Outcome::Failed {
                step: step.title,
                message,
            };
        }
    }
    progress("Connected: this device is in the overlay.".to_owned());
    Outcome::Done
}

/// The line that says what went wrong: the CLI ends with `error: ...`.
fn last_line(text: &str) -> String {
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form() -> Form {
        Form {
            cloud: " cloud.example.net:4501 ".into(),
            device: "laptop-7".into(),
            password: "one time".into(),
            ca: r"C:\Program Files\cyphonic\root.pem".into(),
        }
    }

    #[test]
    fn every_problem_is_named_at_once_with_its_field() {
        let problems = check(&Form::default(), |_| true).unwrap_err();
        let fields: Vec<Field> = problems.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            [Field::Cloud, Field::Device, Field::Password, Field::Ca]
        );
        let bad = Form {
            cloud: "https://cloud/".into(),
            device: "my laptop".into(),
            ..form()
        };
        let problems = check(&bad, |_| false).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[2].1.contains("does not exist"), "{problems:?}");
    }

    #[test]
    fn a_good_form_enrolls_then_starts_the_service_and_keeps_the_password_off_the_command_line() {
        let checked = check(&form(), |_| true).unwrap();
        assert_eq!(checked.cloud, "cloud.example.net:4501");
        let steps = steps(&checked, Path::new(r"C:\ProgramData\cyphonic"));
        assert_eq!(steps.len(), 2);
        assert_eq!(&steps[0].args[..2], ["node", "enroll"]);
        assert!(steps[0]
            .args
            .windows(2)
            .any(|w| w == ["--device", "laptop-7"]));
        assert!(!steps
            .iter()
            .any(|s| s.args.iter().any(|a| a.contains("one time"))));
        assert_eq!(
            steps[0].env,
            [("CYPHONIC_DEVICE_PASSWORD".to_owned(), "one time".to_owned())]
        );
        assert_eq!(&steps[1].args[..3], ["node", "service", "install"]);
    }

    #[test]
    fn a_failed_step_stops_the_rest_and_says_why() {
        let checked = check(&form(), |_| true).unwrap();
        let steps = steps(&checked, Path::new("state"));
        let mut ran = Vec::new();
        let mut shown = Vec::new();
        let outcome = run(
            &steps,
            |s| {
                ran.push(s.title);
                Err(
                    "some log line\nerror: enrollment refused: wrong device ID or password\n"
                        .into(),
                )
            },
            |line| shown.push(line),
        );
        assert_eq!(
            outcome,
            Outcome::Failed {
                step: "Enrolling this device",
                message: "enrollment refused: wrong device ID or password".into()
            }
        );
        assert_eq!(ran.len(), 1, "the service is not installed");
        assert!(shown
            .last()
            .unwrap()
            .contains("wrong device ID or password"));

        let mut shown = Vec::new();
        let outcome = run(&steps, |_| Ok(String::new()), |line| shown.push(line));
        assert_eq!(outcome, Outcome::Done);
        assert_eq!(shown.len(), 3);
        assert!(shown[1].contains("(2/2)"));
    }
}
