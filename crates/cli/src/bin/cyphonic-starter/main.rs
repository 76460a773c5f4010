//! The starter: a small window that asks for the cloud's address, the
//! device ID, its one-time password and the cloud's root certificate, then
//! enrolls this device and starts the cyphonic service (`flow` holds the
//! logic; this file only draws and reads the window).

#![cfg_attr(windows, windows_subsystem = "windows")]

mod flow;

#[cfg(not(windows))]
fn main() -> std::process::ExitCode {
    eprintln!("cyphonic-starter is the Windows starter; on this system run `cyphonic node enroll`");
    std::process::ExitCode::FAILURE
}

#[cfg(windows)]
fn main() {
    window::run();
}

#[cfg(windows)]
mod window {
    use std::path::PathBuf;
    use std::sync::Mutex;

    use windows_sys::Win32::Foundation::{HWND, LPARAM, LRESULT, WPARAM};
    use windows_sys::Win32::System::LibraryLoader::GetModuleHandleW;
    use windows_sys::Win32::UI::WindowsAndMessaging::*;

    use super::flow::{self, Field, Form};

    const ID_CLOUD: usize = 101;
    const ID_DEVICE: usize = 102;
    const ID_PASSWORD: usize = 103;
    const ID_CA: usize = 104;
    const ID_CONNECT: usize = 110;
    const ID_STATUS: usize = 120;
    /// Posted by the worker thread: a new status line is waiting.
    const WM_PROGRESS: u32 = WM_APP + 1;

    static PROGRESS: Mutex<Option<(String, bool)>> = Mutex::new(None);

    fn wide(s: &str) -> Vec<u16> {
        s.encode_utf16().chain([0]).collect()
    }

    fn install_dir() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(PathBuf::from))
            .unwrap_or_default()
    }

    fn state_dir() -> PathBuf {
        std::env::var_os("ProgramData")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
            .join("cyphonic")
    }

    unsafe fn text_of(hwnd: HWND, id: usize) -> String {
        unsafe {
            let item = GetDlgItem(hwnd, id as i32);
            let mut buf = vec![0u16; 1024];
            let n = GetWindowTextW(item, buf.as_mut_ptr(), buf.len() as i32);
            String::from_utf16_lossy(&buf[..n.max(0) as usize])
        }
    }

    unsafe fn set_status(hwnd: HWND, text: &str) {
        let t = wide(text);
        unsafe { SetWindowTextW(GetDlgItem(hwnd, ID_STATUS as i32), t.as_ptr()) };
    }

    unsafe fn control(
        parent: HWND,
        class: &str,
        text: &str,
        style: u32,
        (x, y, w, h): (i32, i32, i32, i32),
        id: usize,
    ) {
        let (class, text) = (wide(class), wide(text));
        unsafe {
            CreateWindowExW(
                0,
                class.as_ptr(),
                text.as_ptr(),
                WS_CHILD | WS_VISIBLE | style,
                x,
                y,
                w,
                h,
                parent,
                id as _,
                GetModuleHandleW(std::ptr::null()),
                std::ptr::null(),
            )
        };
    }

    unsafe fn build(hwnd: HWND) {
        let rows = [
            ("Cloud address", ID_CLOUD, 0u32, String::new()),
            ("Device ID", ID_DEVICE, 0, String::new()),
            ("Password", ID_PASSWORD, ES_PASSWORD as u32, String::new()),
            (
                "Root certificate",
                ID_CA,
                0,
                install_dir().join("root.pem").display().to_string(),
            ),
        ];
        for (i, (label, id, style, initial)) in rows.iter().enumerate() {
            let y = 16 + 34 * i as i32;
            unsafe {
                control(hwnd, "STATIC", label, 0, (16, y + 3, 120, 20), 0);
                control(
                    hwnd,
                    "EDIT",
                    initial,
                    WS_BORDER | WS_TABSTOP | ES_AUTOHSCROLL as u32 | style,
                    (140, y, 300, 24),
                    *id,
                );
            }
        }
        unsafe {
            control(
                hwnd,
                "BUTTON",
                "Connect",
                WS_TABSTOP | BS_DEFPUSHBUTTON as u32,
                (340, 160, 100, 28),
                ID_CONNECT,
            );
            control(hwnd, "STATIC", "", 0, (16, 200, 424, 60), ID_STATUS);
        }
    }

    unsafe fn connect(hwnd: HWND) {
        let form = unsafe {
            Form {
                cloud: text_of(hwnd, ID_CLOUD),
                device: text_of(hwnd, ID_DEVICE),
                password: text_of(hwnd, ID_PASSWORD),
                ca: text_of(hwnd, ID_CA),
            }
        };
        let checked = match flow::check(&form, |p| p.exists()) {
            Ok(c) => c,
            Err(problems) => {
                let text: Vec<&str> = problems.iter().map(|(_, m)| m.as_str()).collect();
                unsafe { set_status(hwnd, &text.join("\n")) };
                if let Some((first, _)) = problems.first() {
                    let id = match first {
                        Field::Cloud => ID_CLOUD,
                        Field::Device => ID_DEVICE,
                        Field::Password => ID_PASSWORD,
                        Field::Ca => ID_CA,
                    };
                    unsafe {
                        windows_sys::Win32::UI::Input::KeyboardAndMouse::SetFocus(GetDlgItem(
                            hwnd, id as i32,
                        ))
                    };
                }
                return;
            }
        };
        unsafe {
            windows_sys::Win32::UI::Input::KeyboardAndMouse::EnableWindow(
                GetDlgItem(hwnd, ID_CONNECT as i32),
                0,
            )
        };
        let steps = flow::steps(&checked, &state_dir());
        let target = hwnd as usize;
        std::thread::spawn(move || {
            let exe = install_dir().join("cyphonic.exe");
            let post = |line: String, done: bool| {
                *PROGRESS.lock().unwrap_or_else(|e| e.into_inner()) = Some((line, done));
                // SAFETY: posting to our own window; it reads PROGRESS.
                unsafe { PostMessageW(target as HWND, WM_PROGRESS, 0, 0) };
            };
            let outcome = flow::run(
                &steps,
                |step| {
                    use std::os::windows::process::CommandExt;
                    const CREATE_NO_WINDOW: u32 = 0x0800_0000;
                    let out = std::process::Command::new(&exe)
                        .args(&step.args)
                        .envs(step.env.iter().map(|(k, v)| (k, v)))
                        .creation_flags(CREATE_NO_WINDOW)
                        .output()
                        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
                    let text = String::from_utf8_lossy(&out.stdout).into_owned()
                        + &String::from_utf8_lossy(&out.stderr);
                    if out.status.success() {
                        Ok(text)
                    } else {
                        Err(text)
                    }
                },
                |line| post(line, false),
            );
            if let flow::Outcome::Failed { step, message } = outcome {
                // The button comes back for another try.
                post(format!("{step} failed: {message}"), true);
            }
        });
    }

    unsafe extern "system" fn wndproc(
        hwnd: HWND,
        msg: u32,
        wparam: WPARAM,
        lparam: LPARAM,
    ) -> LRESULT {
        unsafe {
            match msg {
                WM_CREATE => {
                    build(hwnd);
                    0
                }
                WM_COMMAND if (wparam & 0xffff) == ID_CONNECT => {
                    connect(hwnd);
                    0
                }
                WM_PROGRESS => {
                    if let Some((line, failed)) =
                        PROGRESS.lock().unwrap_or_else(|e| e.into_inner()).clone()
                    {
                        set_status(hwnd, &line);
                        if failed {
                            windows_sys::Win32::UI::Input::KeyboardAndMouse::EnableWindow(
                                GetDlgItem(hwnd, ID_CONNECT as i32),
                                1,
                            );
                        }
                    }
                    0
                }
                WM_DESTROY => {
                    PostQuitMessage(0);
                    0
                }
                _ => DefWindowProcW(hwnd, msg, wparam, lparam),
            }
        }
    }

    pub fn run() {
        let class = wide("cyphonic-starter");
        let title = wide("cyphonic: connect this device");
        // SAFETY: the class and window are ours; the strings outlive the
        // calls; the message loop runs on this thread.
        unsafe {
            let instance = GetModuleHandleW(std::ptr::null());
            let wc = WNDCLASSW {
                style: 0,
                lpfnWndProc: Some(wndproc),
                cbClsExtra: 0,
                cbWndExtra: 0,
                hInstance: instance,
                hIcon: std::ptr::null_mut(),
                hCursor: LoadCursorW(std::ptr::null_mut(), IDC_ARROW),
                hbrBackground: (windows_sys::Win32::Graphics::Gdi::COLOR_WINDOW + 1) as usize as _,
                lpszMenuName: std::ptr::null(),
                lpszClassName: class.as_ptr(),
            };
            RegisterClassW(&wc);
            let hwnd = CreateWindowExW(
                0,
                class.as_ptr(),
                title.as_ptr(),
                WS_OVERLAPPED | WS_CAPTION | WS_SYSMENU | WS_MINIMIZEBOX | WS_VISIBLE,
                CW_USEDEFAULT,
                CW_USEDEFAULT,
                476,
                310,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                instance,
                std::ptr::null(),
            );
            if hwnd.is_null() {
                return;
            }
            let mut msg: MSG = std::mem::zeroed();
            while GetMessageW(&mut msg, std::ptr::null_mut(), 0, 0) > 0 {
                if IsDialogMessageW(hwnd, &msg) == 0 {
                    TranslateMessage(&msg);
                    DispatchMessageW(&msg);
                }
            }
        }
    }
}
