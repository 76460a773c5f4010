//! Windows: one NRPT rule sends the overlay domain to the node's resolver
//! ([`super::nrpt`]); every other lookup stays with the host's DNS client.

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use windows_sys::Win32::Foundation::{ERROR_FILE_NOT_FOUND, ERROR_NO_MORE_ITEMS, ERROR_SUCCESS};
use windows_sys::Win32::System::Registry::{
    RegCloseKey, RegCreateKeyExW, RegDeleteKeyW, RegEnumKeyExW, RegOpenKeyExW, RegQueryValueExW,
    RegSetValueExW, HKEY, HKEY_LOCAL_MACHINE, KEY_READ, KEY_WRITE, REG_DWORD, REG_MULTI_SZ,
    REG_OPTION_NON_VOLATILE, REG_SZ, REG_VALUE_TYPE,
};

use super::nrpt::{self, Rule, RuleStore, Value};
use super::DnsSetup;

/// Puts the rule back out of the table when dropped.
pub struct DnsGuard {
    rule: Option<Rule>,
}

impl DnsGuard {
    /// Removes the rule now.
    pub fn restore(&mut self) -> io::Result<()> {
        match self.rule.take() {
            Some(rule) => nrpt::remove(&mut Registry, &rule),
            None => Ok(()),
        }
    }
}

impl Drop for DnsGuard {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            tracing::warn!(error = %e, "could not remove the NRPT rule");
        }
    }
}

/// Writes the rule. The host's own resolvers are not returned: only the
/// overlay domain reaches the node's resolver, so it forwards nothing.
pub fn install(setup: &DnsSetup) -> io::Result<(DnsGuard, Vec<SocketAddr>)> {
    recover(&setup.state_dir)?;
    let rule = nrpt::rule(&setup.domain, setup.listen, &setup.state_dir);
    nrpt::install(&mut Registry, &rule)?;
    Ok((DnsGuard { rule: Some(rule) }, Vec::new()))
}

/// Removes the rule a crashed run left; whether there was one.
pub fn recover(state_dir: &Path) -> io::Result<bool> {
    let removed = nrpt::recover(&mut Registry, state_dir)?;
    for key in &removed {
        tracing::info!(rule = %key, "removed the NRPT rule a stopped run left");
    }
    Ok(!removed.is_empty())
}

/// The local NRPT table in the registry.
pub struct Registry;

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain([0]).collect()
}

fn check(status: u32) -> io::Result<()> {
    if status == ERROR_SUCCESS {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(status as i32))
    }
}

/// An open registry key, closed on drop.
struct Key(HKEY);

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: the handle was opened by us and is closed once.
        unsafe { RegCloseKey(self.0) };
    }
}

fn open(path: &str, access: u32) -> io::Result<Option<Key>> {
    let mut key: HKEY = std::ptr::null_mut();
    let path = wide(path);
    // SAFETY: valid NUL-terminated path and out pointer for the call.
    let status = unsafe { RegOpenKeyExW(HKEY_LOCAL_MACHINE, path.as_ptr(), 0, access, &mut key) };
    if status == ERROR_FILE_NOT_FOUND {
        return Ok(None);
    }
    check(status)?;
    Ok(Some(Key(key)))
}

fn create(path: &str) -> io::Result<Key> {
    let mut key: HKEY = std::ptr::null_mut();
    let path = wide(path);
    // SAFETY: valid NUL-terminated path and out pointer for the call.
    let status = unsafe {
        RegCreateKeyExW(
            HKEY_LOCAL_MACHINE,
            path.as_ptr(),
            0,
            std::ptr::null(),
            REG_OPTION_NON_VOLATILE,
            KEY_READ | KEY_WRITE,
            std::ptr::null(),
            &mut key,
            std::ptr::null_mut(),
        )
    };
    check(status)?;
    Ok(Key(key))
}

fn encode(value: &Value) -> (REG_VALUE_TYPE, Vec<u8>) {
    let utf16 = |units: Vec<u16>| units.iter().flat_map(|u| u.to_le_bytes()).collect();
    match value {
        Value::Dword(d) => (REG_DWORD, d.to_le_bytes().to_vec()),
        Value::String(s) => (REG_SZ, utf16(wide(s))),
        Value::MultiString(list) => {
            let mut units: Vec<u16> = list.iter().flat_map(|s| wide(s)).collect();
            units.push(0);
            (REG_MULTI_SZ, utf16(units))
        }
    }
}

fn decode(kind: REG_VALUE_TYPE, bytes: &[u8]) -> Option<Value> {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let strings = || -> Vec<String> {
        units
            .split(|u| *u == 0)
            .filter(|s| !s.is_empty())
            .map(String::from_utf16_lossy)
            .collect()
    };
    match kind {
        REG_DWORD => Some(Value::Dword(u32::from_le_bytes(
            bytes.get(..4)?.try_into().ok()?,
        ))),
        REG_SZ => Some(Value::String(
            strings().into_iter().next().unwrap_or_default(),
        )),
        REG_MULTI_SZ => Some(Value::MultiString(strings())),
        _ => None,
    }
}

impl RuleStore for Registry {
    fn rules(&mut self) -> io::Result<Vec<String>> {
        let Some(base) = open(nrpt::POLICY_KEY, KEY_READ)? else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        for index in 0.. {
            let mut name = [0u16; 256];
            let mut len = name.len() as u32;
            // SAFETY: the buffer and its length are valid for the call.
            let status = unsafe {
                RegEnumKeyExW(
                    base.0,
                    index,
                    name.as_mut_ptr(),
                    &mut len,
                    std::ptr::null(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            if status == ERROR_NO_MORE_ITEMS {
                break;
            }
            check(status)?;
            names.push(String::from_utf16_lossy(&name[..len as usize]));
        }
        Ok(names)
    }

    fn value(&mut self, rule: &str, name: &str) -> io::Result<Option<Value>> {
        let Some(key) = open(&format!(r"{}\{rule}", nrpt::POLICY_KEY), KEY_READ)? else {
            return Ok(None);
        };
        let name = wide(name);
        let mut kind: REG_VALUE_TYPE = 0;
        let mut buf = vec![0u8; 4096];
        let mut len = buf.len() as u32;
        // SAFETY: the name, the buffer and their lengths are valid.
        let status = unsafe {
            RegQueryValueExW(
                key.0,
                name.as_ptr(),
                std::ptr::null(),
                &mut kind,
                buf.as_mut_ptr(),
                &mut len,
            )
        };
        if status == ERROR_FILE_NOT_FOUND {
            return Ok(None);
        }
        check(status)?;
        Ok(decode(kind, &buf[..len as usize]))
    }

    fn write(&mut self, rule: &str, values: &[(&str, Value)]) -> io::Result<()> {
        let key = create(&format!(r"{}\{rule}", nrpt::POLICY_KEY))?;
        for (name, value) in values {
            let (kind, data) = encode(value);
            let name = wide(name);
            // SAFETY: the name and data are valid for the call.
            check(unsafe {
                RegSetValueExW(
                    key.0,
                    name.as_ptr(),
                    0,
                    kind,
                    data.as_ptr(),
                    data.len() as u32,
                )
            })?;
        }
        Ok(())
    }

    fn delete(&mut self, rule: &str) -> io::Result<()> {
        let Some(base) = open(nrpt::POLICY_KEY, KEY_READ | KEY_WRITE)? else {
            return Ok(());
        };
        let rule = wide(rule);
        // SAFETY: a valid open key and NUL-terminated name.
        let status = unsafe { RegDeleteKeyW(base.0, rule.as_ptr()) };
        if status == ERROR_FILE_NOT_FOUND {
            return Ok(());
        }
        check(status)
    }

    fn refresh(&mut self) {
        // The DNS client watches the local table; flushing its cache drops
        // answers it had for the domain from before the rule.
        // DnsFlushResolverCache is exported by dnsapi.dll but not declared
        // in the SDK headers, so it is looked up by name.
        use windows_sys::Win32::System::LibraryLoader::{GetProcAddress, LoadLibraryW};
        let dll = wide("dnsapi.dll");
        // SAFETY: NUL-terminated names; the function, when found, takes no
        // arguments and returns a BOOL (as ipconfig /flushdns calls it).
        unsafe {
            let module = LoadLibraryW(dll.as_ptr());
            if module.is_null() {
                return;
            }
            if let Some(flush) = GetProcAddress(module, c"DnsFlushResolverCache".as_ptr().cast()) {
                let flush: unsafe extern "system" fn() -> i32 = std::mem::transmute(flush);
                flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_encoding() {
        for v in [
            Value::Dword(8),
            Value::String("127.0.0.153".into()),
            Value::String(String::new()),
            Value::MultiString(vec![".cyphonic.internal".into(), ".b".into()]),
        ] {
            let (kind, bytes) = encode(&v);
            let back = decode(kind, &bytes).unwrap();
            match (&v, &back) {
                (Value::String(s), Value::String(b)) => assert_eq!(s, b),
                _ => assert_eq!(v, back),
            }
        }
    }

    /// The rule in a real registry (wine's, when the tests run there):
    /// written, found after a simulated crash, removed, nothing else
    /// touched.
    #[test]
    fn the_rule_lives_and_dies_in_the_registry() {
        let state = std::env::temp_dir().join(format!("cyphonic-nrpt-{}", std::process::id()));
        let mut reg = Registry;
        let other = "{cyphonic-test-foreign-rule}";
        // Writing HKLM needs an administrator (wine's prefix is ours).
        reg.write(other, &[("Comment", Value::String("someone else".into()))])
            .expect("HKLM is writable: run under wine or from an elevated prompt");
        let rule = nrpt::rule("cyphonic.internal", "127.0.0.153".parse().unwrap(), &state);
        nrpt::install(&mut reg, &rule).unwrap();
        assert_eq!(
            reg.value(&rule.key, "Name").unwrap(),
            Some(Value::MultiString(vec![".cyphonic.internal".into()]))
        );
        assert_eq!(
            reg.value(&rule.key, "ConfigOptions").unwrap(),
            Some(Value::Dword(8))
        );
        // A crash: the guard never ran. The next start removes it.
        assert!(recover(&state).unwrap());
        assert!(!reg.rules().unwrap().contains(&rule.key));
        assert!(reg.rules().unwrap().iter().any(|k| k == other));
        // install and the guard.
        let (guard, upstreams) = install(&DnsSetup {
            listen: "127.0.0.153".parse().unwrap(),
            domain: "cyphonic.internal".into(),
            tun_name: "cyphonic".into(),
            state_dir: state.clone(),
        })
        .unwrap();
        assert!(upstreams.is_empty());
        assert!(reg.rules().unwrap().contains(&rule.key));
        drop(guard);
        assert!(!reg.rules().unwrap().contains(&rule.key));
        reg.delete(other).unwrap();
    }
}
