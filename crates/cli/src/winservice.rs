//! The node daemon as a Windows service: `cyphonic node service install`
//! registers it with the service control manager (automatic start) and
//! starts it; the manager runs `cyphonic.exe node service run`, which
//! reports to it and stops the daemon when asked; `uninstall` stops and
//! deletes it, removes the overlay's NRPT rule and the wintun adapter.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context};
use windows_sys::Win32::Foundation::{GetLastError, ERROR_SERVICE_DOES_NOT_EXIST, NO_ERROR};
use windows_sys::Win32::System::Services::{
    CloseServiceHandle, ControlService, CreateServiceW, DeleteService, OpenSCManagerW,
    OpenServiceW, RegisterServiceCtrlHandlerExW, SetServiceStatus, StartServiceCtrlDispatcherW,
    StartServiceW, SC_HANDLE, SC_MANAGER_ALL_ACCESS, SERVICE_ACCEPT_SHUTDOWN, SERVICE_ACCEPT_STOP,
    SERVICE_ALL_ACCESS, SERVICE_AUTO_START, SERVICE_CONTROL_SHUTDOWN, SERVICE_CONTROL_STOP,
    SERVICE_ERROR_NORMAL, SERVICE_RUNNING, SERVICE_START_PENDING, SERVICE_STATUS,
    SERVICE_STATUS_HANDLE, SERVICE_STOPPED, SERVICE_STOP_PENDING, SERVICE_TABLE_ENTRYW,
    SERVICE_WIN32_OWN_PROCESS,
};

use cyphonic_node::daemon::{self, RunOptions};

/// The service's name in the service control manager.
pub const SERVICE_NAME: &str = "cyphonic";

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain([0]).collect()
}

fn last_error(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", std::io::Error::last_os_error())
}

/// A service-manager handle, closed on drop.
struct Handle(SC_HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: opened by us, closed once.
        unsafe { CloseServiceHandle(self.0) };
    }
}

fn manager() -> anyhow::Result<Handle> {
    // SAFETY: null machine and database mean the local defaults.
    let h = unsafe { OpenSCManagerW(std::ptr::null(), std::ptr::null(), SC_MANAGER_ALL_ACCESS) };
    if h.is_null() {
        return Err(last_error(
            "cannot open the service control manager (run as an administrator)",
        ));
    }
    Ok(Handle(h))
}

/// Registers the service for `exe` with `state_dir` and starts it.
pub fn install(exe: &Path, state_dir: &Path) -> anyhow::Result<()> {
    let scm = manager()?;
    let name = wide(SERVICE_NAME);
    let display = wide("cyphonic node");
    let command = wide(&crate::service_command_line(exe, state_dir));
    // SAFETY: NUL-terminated strings valid for the call; nulls where the
    // API takes defaults (LocalSystem, no group, no dependencies).
    let service = unsafe {
        CreateServiceW(
            scm.0,
            name.as_ptr(),
            display.as_ptr(),
            SERVICE_ALL_ACCESS,
            SERVICE_WIN32_OWN_PROCESS,
            SERVICE_AUTO_START,
            SERVICE_ERROR_NORMAL,
            command.as_ptr(),
            std::ptr::null(),
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if service.is_null() {
        return Err(last_error("cannot create the service"));
    }
    let service = Handle(service);
    // SAFETY: a valid service handle; no arguments.
    if unsafe { StartServiceW(service.0, 0, std::ptr::null()) } == 0 {
        return Err(last_error("the service was created but did not start"));
    }
    Ok(())
}

/// Stops and deletes the service, then removes what a node leaves on the
/// host (the NRPT rule; the adapter goes with the driver's session).
/// Whether there was a service.
pub fn uninstall(state_dir: &Path) -> anyhow::Result<bool> {
    let scm = manager()?;
    let name = wide(SERVICE_NAME);
    // SAFETY: valid manager handle and name.
    let service = unsafe { OpenServiceW(scm.0, name.as_ptr(), SERVICE_ALL_ACCESS) };
    let existed = if service.is_null() {
        // SAFETY: no preconditions.
        if unsafe { GetLastError() } != ERROR_SERVICE_DOES_NOT_EXIST {
            return Err(last_error("cannot open the service"));
        }
        false
    } else {
        let service = Handle(service);
        // SAFETY: a zeroed SERVICE_STATUS is a valid out buffer.
        let mut status: SERVICE_STATUS = unsafe { std::mem::zeroed() };
        // Stopping one that is not running fails; deleting still works.
        // SAFETY: valid handle and out pointer.
        unsafe { ControlService(service.0, SERVICE_CONTROL_STOP, &mut status) };
        // SAFETY: valid handle.
        if unsafe { DeleteService(service.0) } == 0 {
            return Err(last_error("cannot delete the service"));
        }
        true
    };
    cyphonic_platform::dns::recover(state_dir).context("cannot remove the NRPT rule")?;
    Ok(existed)
}

/// What the service runs, set before the dispatcher starts.
static OPTIONS: OnceLock<RunOptions> = OnceLock::new();
static STATUS_HANDLE: OnceLock<usize> = OnceLock::new();

fn report(state: u32, exit_code: u32) {
    let Some(handle) = STATUS_HANDLE.get() else {
        return;
    };
    let accepted = if state == SERVICE_RUNNING {
        SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN
    } else {
        0
    };
    let status = SERVICE_STATUS {
        dwServiceType: SERVICE_WIN32_OWN_PROCESS,
        dwCurrentState: state,
        dwControlsAccepted: accepted,
        dwWin32ExitCode: exit_code,
        dwServiceSpecificExitCode: 0,
        dwCheckPoint: 0,
        dwWaitHint: if state == SERVICE_RUNNING { 0 } else { 10_000 },
    };
    // SAFETY: the handle came from RegisterServiceCtrlHandlerExW.
    unsafe { SetServiceStatus(*handle as SERVICE_STATUS_HANDLE, &status) };
}

unsafe extern "system" fn on_control(
    control: u32,
    _event: u32,
    _data: *mut core::ffi::c_void,
    _context: *mut core::ffi::c_void,
) -> u32 {
    match control {
        SERVICE_CONTROL_STOP | SERVICE_CONTROL_SHUTDOWN => {
            report(SERVICE_STOP_PENDING, NO_ERROR);
            daemon::request_service_stop();
            NO_ERROR
        }
        _ => NO_ERROR,
    }
}

unsafe extern "system" fn service_main(_argc: u32, _argv: *mut windows_sys::core::PWSTR) {
    let name = wide(SERVICE_NAME);
    // SAFETY: a NUL-terminated name and a handler with the documented
    // signature.
    let handle =
        unsafe { RegisterServiceCtrlHandlerExW(name.as_ptr(), Some(on_control), std::ptr::null()) };
    if handle.is_null() {
        return;
    }
    let _ = STATUS_HANDLE.set(handle as usize);
    report(SERVICE_START_PENDING, NO_ERROR);
    let Some(options) = OPTIONS.get().cloned() else {
        report(SERVICE_STOPPED, 1);
        return;
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => {
            report(SERVICE_STOPPED, 1);
            return;
        }
    };
    report(SERVICE_RUNNING, NO_ERROR);
    let result = runtime.block_on(daemon::run(options));
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "the node daemon stopped");
    }
    report(SERVICE_STOPPED, if result.is_ok() { NO_ERROR } else { 1 });
}

/// Runs the daemon under the service control manager; returns when the
/// service has stopped.
pub fn run(options: RunOptions) -> anyhow::Result<()> {
    if OPTIONS.set(options).is_err() {
        bail!("the service runs once per process");
    }
    let mut name = wide(SERVICE_NAME);
    let table = [
        SERVICE_TABLE_ENTRYW {
            lpServiceName: name.as_mut_ptr(),
            lpServiceProc: Some(service_main),
        },
        SERVICE_TABLE_ENTRYW {
            lpServiceName: std::ptr::null_mut(),
            lpServiceProc: None,
        },
    ];
    // SAFETY: a null-terminated table whose strings outlive the call.
    if unsafe { StartServiceCtrlDispatcherW(table.as_ptr()) } == 0 {
        return Err(last_error(
            "not started by the service control manager (use `cyphonic node run` in a console)",
        ));
    }
    Ok(())
}
