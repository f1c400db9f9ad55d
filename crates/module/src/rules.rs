//! Rules on single values: names, paths, patterns, addresses. Each returns the value in its typed
//! form, or a message that says what is wrong and what to write instead. No I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};

use crate::config::{
    IpPrefix, WebhookUrl, DESCRIPTION_MAX_CHARS, ENV_NAME_MAX_BYTES, ENV_VALUE_MAX_BYTES,
    INTERFACE_NAME_MAX_BYTES, NAME_MAX_BYTES, NODE_NAME_MAX_BYTES, PATH_MAX_BYTES,
    PROCESS_NAME_MAX_BYTES, RESERVED_ENV_PREFIX, WEBHOOK_URL_MAX_BYTES,
};

/// Module and checker names: `[a-z][a-z0-9_-]*`, at most 32 bytes. They become file names, URL
/// segments and log fields, so nothing there may need quoting.
pub fn check_name(s: &str) -> Result<(), String> {
    const RULE: &str =
        "a name is 1 to 32 characters of a-z, 0-9, '-' and '_', starting with a letter";
    if s.is_empty() {
        return Err(format!("the name is empty: {RULE}"));
    }
    if s.len() > NAME_MAX_BYTES {
        return Err(format!("{s:?} is {} bytes long: {RULE}", s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        let lower = s.to_ascii_lowercase();
        let hint = if c.is_ascii_uppercase() && check_name(&lower).is_ok() {
            format!(" (write {lower:?})")
        } else {
            String::new()
        };
        return Err(format!("{s:?} contains {c:?}: {RULE}{hint}"));
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("{s:?} does not start with a letter: {RULE}"));
    }
    Ok(())
}

/// Node names: the rule of `mirrorkit_net::pki::validate_node_name` (one DNS label of a-z, 0-9
/// and '-'), kept here so that this crate stays free of the network stack.
pub fn check_node_name(s: &str) -> Result<(), String> {
    const RULE: &str =
        "a node name is 1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-'";
    if s.is_empty() {
        return Err(format!("the node name is empty: {RULE}"));
    }
    if s.len() > NODE_NAME_MAX_BYTES
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || s.starts_with('-')
        || s.ends_with('-')
    {
        return Err(format!("{s:?} is not a valid node name: {RULE}"));
    }
    Ok(())
}

pub fn check_description(s: &str) -> Result<(), String> {
    if s.chars().count() > DESCRIPTION_MAX_CHARS {
        return Err(format!(
            "the description is {} characters long; keep it to {DESCRIPTION_MAX_CHARS} \
             (one line for the console and `mirrorkit status`)",
            s.chars().count()
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(
            "the description contains a control character (a newline, a tab...): \
                    keep it to one line of text"
                .into(),
        );
    }
    Ok(())
}

/// A replicated directory: absolute, without `..`, not `/` and not in a kernel file system.
/// Returns it normalised (repeated and trailing `/` and `.` components removed).
pub fn parse_mirror_dir(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err(
            "the directory is empty: write an absolute path such as \"/srv/app/data\"".into(),
        );
    }
    if s.len() > PATH_MAX_BYTES {
        return Err(format!(
            "the path is {} bytes long; Linux accepts {PATH_MAX_BYTES}",
            s.len()
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{s:?} contains a control character"));
    }
    let path = Path::new(s);
    if !path.is_absolute() {
        return Err(format!(
            "{s:?} is a relative path: write the absolute path of the directory, such as \"/{}\"",
            s.trim_start_matches("./")
        ));
    }
    let mut normal = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => normal.push(part),
            Component::ParentDir => {
                return Err(format!(
                    "{s:?} contains '..': write the directory's path without it, so that one \
                     directory has one name"
                ))
            }
            Component::Prefix(_) => return Err(format!("{s:?} is not a Linux path")),
        }
    }
    if normal == Path::new("/") {
        return Err("\"/\" cannot be replicated: name the application's own directory".into());
    }
    for forbidden in ["/proc", "/sys", "/dev"] {
        if normal.starts_with(forbidden) {
            return Err(format!(
                "{} is in {forbidden}, a kernel file system that cannot be replicated",
                normal.display()
            ));
        }
    }
    Ok(normal)
}

/// An include or exclude pattern, relative to the mirror's directory. Returns the compiled glob.
///
/// `*`, `?` and `[...]` do not match `/`; `**` matches any number of directories. A pattern
/// matches a path and, through the ancestor rule of [`crate::MirrorFilter`], everything below it.
pub fn parse_pattern(s: &str) -> Result<globset::Glob, String> {
    if s.is_empty() {
        return Err("the pattern is empty: remove it, or write \"**\" for everything".into());
    }
    if s.starts_with('/') {
        return Err(format!(
            "{s:?} starts with '/': patterns are relative to the mirror's dir (write {:?})",
            s.trim_start_matches('/')
        ));
    }
    if s.starts_with("./") {
        return Err(format!(
            "{s:?} starts with \"./\": patterns are already relative to the mirror's dir (write {:?})",
            s.trim_start_matches("./")
        ));
    }
    if s.len() > 1 && s.ends_with('/') {
        return Err(format!(
            "{s:?} ends with '/': a pattern matches a directory and everything below it, so \
             write {:?}",
            s.trim_end_matches('/')
        ));
    }
    if s.split('/').any(|part| part == "..") {
        return Err(format!(
            "{s:?} contains '..': a pattern cannot leave the mirror's dir"
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{s:?} contains a control character"));
    }
    globset::GlobBuilder::new(s)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("{s:?} is not a valid glob pattern: {}", glob_error_kind(&e)))
}

/// globset's message without the pattern, which the caller already quotes.
fn glob_error_kind(e: &globset::Error) -> String {
    e.kind().to_string()
}

/// A virtual IP, `ADDRESS/PREFIX`, checked to be a usable unicast host address of its subnet.
pub fn parse_vip_address(s: &str) -> Result<IpPrefix, String> {
    let Some((addr_s, prefix_s)) = s.split_once('/') else {
        return Err(format!(
            "{s:?} has no prefix length: write ADDRESS/PREFIX with the prefix of the interface's \
             subnet, such as \"{s}/24\""
        ));
    };
    let addr: IpAddr = addr_s
        .parse()
        .map_err(|_| format!("{addr_s:?} is not an IPv4 or IPv6 address"))?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len: u8 = prefix_s
        .parse()
        .ok()
        .filter(|p| (1..=max).contains(p))
        .ok_or_else(|| {
            format!(
                "prefix length {prefix_s:?} is not a number from 1 to {max} ({})",
                if addr.is_ipv4() { "IPv4" } else { "IPv6" }
            )
        })?;
    let kind = match addr {
        IpAddr::V4(a) => v4_unusable(a, prefix_len),
        IpAddr::V6(a) => v6_unusable(a, prefix_len),
    };
    if let Some(kind) = kind {
        return Err(format!(
            "{addr} is {kind}: a virtual IP must be a unicast host address that clients can reach"
        ));
    }
    Ok(IpPrefix { addr, prefix_len })
}

fn v4_unusable(a: Ipv4Addr, prefix_len: u8) -> Option<String> {
    if a.is_unspecified() {
        return Some("the unspecified address".into());
    }
    if a.is_loopback() {
        return Some("a loopback address".into());
    }
    if a.is_multicast() {
        return Some("a multicast address".into());
    }
    if a.is_broadcast() {
        return Some("the broadcast address".into());
    }
    // /31 and /32 have no network or broadcast address (RFC 3021).
    if prefix_len <= 30 {
        let host_bits = u32::MAX >> prefix_len;
        let bits = u32::from(a);
        let net = Ipv4Addr::from(bits & !host_bits);
        if bits & host_bits == 0 {
            return Some(format!("the network address of {net}/{prefix_len}"));
        }
        if bits & host_bits == host_bits {
            return Some(format!("the broadcast address of {net}/{prefix_len}"));
        }
    }
    None
}

fn v6_unusable(a: Ipv6Addr, prefix_len: u8) -> Option<String> {
    if a.is_unspecified() {
        return Some("the unspecified address".into());
    }
    if a.is_loopback() {
        return Some("the loopback address".into());
    }
    if a.is_multicast() {
        return Some("a multicast address".into());
    }
    if a.to_ipv4_mapped().is_some() {
        return Some("an IPv4-mapped address (write the IPv4 address itself)".into());
    }
    if prefix_len <= 126 {
        let host_bits = u128::MAX >> prefix_len;
        if u128::from(a) & host_bits == 0 {
            let net = Ipv6Addr::from(u128::from(a) & !host_bits);
            return Some(format!(
                "the subnet-router anycast address of {net}/{prefix_len}"
            ));
        }
    }
    None
}

/// A network interface name, by the kernel's rule (`dev_valid_name`): 1 to 15 bytes, not `.` or
/// `..`, no `/`, `:` or white space.
pub fn check_interface(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(
            "the interface name is empty: write the interface that carries the \
                    virtual IP's subnet, such as \"eth0\" (see `ip -brief link`)"
                .into(),
        );
    }
    if s.len() > INTERFACE_NAME_MAX_BYTES {
        return Err(format!(
            "{s:?} is {} bytes long; Linux interface names are at most {INTERFACE_NAME_MAX_BYTES}",
            s.len()
        ));
    }
    if s == "." || s == ".." {
        return Err(format!("{s:?} is not a valid interface name"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        let why = if c == ':' {
            " (\"eth0:1\" is an old-style alias label, not an interface: write \"eth0\")"
        } else {
            ""
        };
        return Err(format!(
            "{s:?} contains {c:?}, which Linux refuses in an interface name{why}"
        ));
    }
    Ok(())
}

/// A file of the module folder, as written: relative, without `..`. Whether it exists, is
/// executable and stays inside the folder once symbolic links are followed is checked on disk.
pub fn parse_module_file(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("the path is empty: name a file of the module folder".into());
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{s:?} contains a control character"));
    }
    let path = Path::new(s);
    if path.is_absolute() {
        return Err(format!(
            "{s:?} is absolute: scripts live in the module folder, so write a path relative to \
             it (copy the file into the folder, or write a script there that calls it)"
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{s:?} contains '..': scripts must stay inside the module folder"
        ));
    }
    let normal: PathBuf = path
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    if normal.as_os_str().is_empty() || s.ends_with('/') {
        return Err(format!("{s:?} names a directory: name the script file"));
    }
    Ok(normal)
}

/// A variable name of `[env]`: a portable shell name, not in the daemon's reserved prefix.
pub fn check_env_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > ENV_NAME_MAX_BYTES {
        return Err(format!(
            "{s:?}: a variable name is 1 to {ENV_NAME_MAX_BYTES} characters"
        ));
    }
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{s:?} is not a variable name that a shell accepts: letters, digits and '_', not \
             starting with a digit"
        ));
    }
    if s.starts_with(RESERVED_ENV_PREFIX) {
        return Err(format!(
            "{s:?} starts with {RESERVED_ENV_PREFIX}, which is reserved for the variables the \
             daemon sets (docs/modules.md, \"Script environment\"): choose another name"
        ));
    }
    Ok(())
}

pub fn check_env_value(s: &str) -> Result<(), String> {
    if s.len() > ENV_VALUE_MAX_BYTES {
        return Err(format!(
            "the value is {} bytes long; at most {ENV_VALUE_MAX_BYTES}",
            s.len()
        ));
    }
    if s.contains('\0') {
        return Err("the value contains a NUL character, which an environment cannot hold".into());
    }
    Ok(())
}

/// A process checker's `process_name`, compared with `/proc/PID/comm`.
pub fn check_process_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("the process name is empty".into());
    }
    if s.len() > PROCESS_NAME_MAX_BYTES {
        let cut: String = s
            .char_indices()
            .take_while(|(i, c)| i + c.len_utf8() <= PROCESS_NAME_MAX_BYTES)
            .map(|(_, c)| c)
            .collect();
        return Err(format!(
            "{s:?} is {} bytes long, but the kernel keeps only the first \
             {PROCESS_NAME_MAX_BYTES} bytes of a process name (/proc/PID/comm): write {cut:?}, \
             or use pid_file",
            s.len()
        ));
    }
    if s.contains('/') || s.chars().any(char::is_control) {
        return Err(format!(
            "{s:?} is not a process name (the name of the executable, without directory, as in \
             /proc/PID/comm)"
        ));
    }
    Ok(())
}

/// A process checker's `pid_file`: absolute, or relative to the module's run directory.
pub fn parse_pid_file(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("the path is empty".into());
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{s:?} contains a control character"));
    }
    let path = Path::new(s);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{s:?} contains '..': write an absolute path, or a path relative to the module's \
             run directory (MIRRORKIT_RUN_DIR)"
        ));
    }
    if s.ends_with('/') {
        return Err(format!("{s:?} names a directory: name the pid file"));
    }
    Ok(path.to_path_buf())
}

/// A TCP checker's `address`: `IP:PORT` (`[IPv6]:PORT`), port not 0.
pub fn parse_tcp_address(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| {
        format!(
            "{s:?} is not IP:PORT (such as \"127.0.0.1:8080\" or \"[::1]:8080\"); host names are \
             not resolved, so that a check never waits on DNS"
        )
    })?;
    if addr.port() == 0 {
        return Err(format!("{s:?}: port 0 cannot be connected to"));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(format!(
            "{s:?}: {} cannot be connected to; write the address the application listens on \
             (127.0.0.1 for all addresses)",
            addr.ip()
        ));
    }
    Ok(addr)
}

/// A ping checker's `target`: an IPv4 or IPv6 address (no host name, no prefix) that can answer
/// an echo request: not unspecified, multicast, broadcast, IPv4-mapped, or IPv6 link-local
/// (which would need an interface to be reached).
pub fn parse_ping_target(s: &str) -> Result<IpAddr, String> {
    if let Some((addr, _)) = s.split_once('/') {
        if addr.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "{s:?} has a prefix length: write the address alone ({addr:?})"
            ));
        }
    }
    let ip: IpAddr = s.parse().map_err(|_| {
        format!(
            "{s:?} is not an IPv4 or IPv6 address (such as \"10.0.0.1\" or \"2001:db8::1\"); \
             host names are not resolved, so that a check never waits on DNS"
        )
    })?;
    let why = match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped address (write the IPv4 address itself)")
        }
        IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80 => Some(
            "an IPv6 link-local address, which is only reachable through a named interface: \
             write a global or unique-local address of that host",
        ),
        _ => None,
    };
    match why {
        Some(why) => Err(format!(
            "{ip} is {why}: a ping target is one host that answers echo requests, such as the \
             default gateway"
        )),
        None => Ok(ip),
    }
}

/// `[notify]`'s `webhook`: `http://` or `https://`, a host (name, IPv4, or `[IPv6]`), an optional
/// port and path (with query); optional `user[:password]@` (sent as written). ASCII only, with
/// `%XX` escapes; no white space, control characters or fragment.
pub fn parse_webhook_url(s: &str) -> Result<WebhookUrl, String> {
    const EXAMPLE: &str = "\"https://ops.example/hook\"";
    if s.is_empty() {
        return Err(format!(
            "the URL is empty: write the webhook's full address, such as {EXAMPLE}"
        ));
    }
    if s.len() > WEBHOOK_URL_MAX_BYTES {
        return Err(format!(
            "the URL is {} bytes long; at most {WEBHOOK_URL_MAX_BYTES}",
            s.len()
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{s:?} contains {c:?}: a URL holds no white space or control character \
             (percent-encode it: a space is %20)"
        ));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii()) {
        return Err(format!(
            "{s:?} contains {c:?}: write it percent-encoded (its UTF-8 bytes as %XX), or the \
             host name in its ASCII (xn--) form"
        ));
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!(
            "{s:?} has no scheme: write the full URL, such as \"https://{s}\""
        ));
    };
    let https = match scheme {
        "https" => true,
        "http" => false,
        _ if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http") => {
            return Err(format!(
                "{s:?}: write the scheme in lower case ({:?})",
                scheme.to_ascii_lowercase()
            ))
        }
        _ => {
            return Err(format!(
                "{s:?}: the scheme {scheme:?} is not supported: a webhook is an http:// or \
                 https:// URL"
            ))
        }
    };
    if let Some((_, fragment)) = rest.split_once('#') {
        return Err(format!(
            "{s:?} has a fragment (#{fragment}), which is never sent to the server: remove it"
        ));
    }
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((info, hp)) => (Some(info), hp),
        None => (None, authority),
    };
    if let Some(info) = userinfo {
        if info.is_empty() {
            return Err(format!("{s:?}: nothing before '@': remove the '@'"));
        }
        check_url_chars(s, info, "!$&'()*+,;=:")?;
    }
    let (host, port) = split_host_port(s, hostport)?;
    let path_and_query = match path.strip_prefix('?') {
        Some(_) => format!("/{path}"),
        None if path.is_empty() => "/".to_owned(),
        None => path.to_owned(),
    };
    check_url_chars(s, &path_and_query, "!$&'()*+,;=:@/?")?;
    Ok(WebhookUrl {
        text: s.to_owned(),
        https,
        userinfo: userinfo.map(str::to_owned),
        host,
        port,
        path_and_query,
    })
}

/// The host and port of a URL's authority; the host without brackets.
fn split_host_port(url: &str, hostport: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let Some((v6, after)) = inner.split_once(']') else {
            return Err(format!("{url:?}: '[' without ']' around the IPv6 address"));
        };
        let ip: Ipv6Addr = v6
            .parse()
            .map_err(|_| format!("{url:?}: {v6:?} is not an IPv6 address"))?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(format!("{url:?}: {ip} cannot be connected to"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(format!("{url:?}: expected ':PORT' after ']'")),
            },
        };
        (v6.to_owned(), port)
    } else {
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        };
        if host.is_empty() {
            return Err(format!(
                "{url:?} has no host: write one, such as {:?}",
                "https://ops.example/hook"
            ));
        }
        if host.contains(':') {
            return Err(format!(
                "{url:?}: write an IPv6 host between brackets (\"http://[2001:db8::1]:8080/\")"
            ));
        }
        check_url_host(url, host)?;
        (host.to_owned(), port)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) => return Err(format!("{url:?}: port 0 cannot be connected to")),
            Ok(n) if !p.starts_with('+') => Some(n),
            _ => {
                return Err(format!(
                    "{url:?}: the port {p:?} is not a number from 1 to 65535"
                ))
            }
        },
    };
    Ok((host, port))
}

/// A URL's host name or IPv4 address.
fn check_url_host(url: &str, host: &str) -> Result<(), String> {
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let ip: Ipv4Addr = host
            .parse()
            .map_err(|_| format!("{url:?}: {host:?} is not a valid IPv4 address"))?;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            return Err(format!("{url:?}: {ip} cannot be connected to"));
        }
        return Ok(());
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.len() > 253 || !host.split('.').all(valid_label) {
        return Err(format!(
            "{url:?}: {host:?} is not a valid host name (labels of letters, digits and '-', \
             separated by dots) nor an IP address"
        ));
    }
    Ok(())
}

/// `part` of `url` holds only unreserved characters, `%XX` escapes and `extra`.
fn check_url_chars(url: &str, part: &str, extra: &str) -> Result<(), String> {
    let bytes = part.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return Err(format!(
                    "{url:?} has a '%' that is not followed by two hexadecimal digits: write \
                     %25 for a '%' itself"
                ));
            }
            i += 3;
            continue;
        }
        let unreserved = b.is_ascii_alphanumeric() || b"-._~".contains(&b);
        if !unreserved && !extra.as_bytes().contains(&b) {
            return Err(format!(
                "{url:?} contains {:?}, which a URL cannot hold there: percent-encode it \
                 (%{b:02X})",
                char::from(b)
            ));
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T: std::fmt::Debug>(r: Result<T, String>) -> String {
        match r {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn names() {
        assert!(check_name("demo").is_ok());
        assert!(check_name("pg-main_2").is_ok());
        assert!(err(check_name("")).contains("empty"));
        assert!(err(check_name("Demo")).contains("write \"demo\""));
        assert!(err(check_name("2pg")).contains("start with a letter"));
        assert!(err(check_name("a/b")).contains("'/'"));
        assert!(err(check_name(&"a".repeat(33))).contains("33 bytes"));
        assert!(check_node_name("alpha-1").is_ok());
        assert!(err(check_node_name("-alpha")).contains("not a valid node name"));
        assert!(err(check_node_name("Alpha")).contains("not a valid node name"));
    }

    #[test]
    fn mirror_dirs() {
        assert_eq!(
            parse_mirror_dir("/srv//app/./data/"),
            Ok(PathBuf::from("/srv/app/data"))
        );
        assert!(err(parse_mirror_dir("srv/data")).contains("relative"));
        assert!(err(parse_mirror_dir("/srv/../data")).contains("'..'"));
        assert!(err(parse_mirror_dir("/")).contains("cannot be replicated"));
        assert!(err(parse_mirror_dir("//")).contains("cannot be replicated"));
        assert!(err(parse_mirror_dir("/proc/x")).contains("kernel file system"));
        assert!(err(parse_mirror_dir("")).contains("empty"));
        assert!(err(parse_mirror_dir("/a\nb")).contains("control"));
    }

    #[test]
    fn patterns() {
        assert!(parse_pattern("**/*.log").is_ok());
        assert!(parse_pattern("cache").is_ok());
        assert!(err(parse_pattern("/tmp")).contains("write \"tmp\""));
        assert!(err(parse_pattern("./tmp")).contains("write \"tmp\""));
        assert!(err(parse_pattern("tmp/")).contains("write \"tmp\""));
        assert!(err(parse_pattern("a/../b")).contains("'..'"));
        assert!(err(parse_pattern("[a-")).contains("not a valid glob"));
        assert!(err(parse_pattern("{a,b")).contains("not a valid glob"));
        assert!(err(parse_pattern("")).contains("empty"));
    }

    #[test]
    fn vip_addresses() {
        let p = parse_vip_address("192.0.2.10/24").expect("valid");
        assert_eq!(p.to_string(), "192.0.2.10/24");
        assert!(parse_vip_address("2001:db8::10/64").is_ok());
        assert!(parse_vip_address("192.0.2.0/31").is_ok());
        assert!(parse_vip_address("192.0.2.7/32").is_ok());
        assert!(err(parse_vip_address("192.0.2.10")).contains("\"192.0.2.10/24\""));
        assert!(err(parse_vip_address("192.0.2.10/33")).contains("1 to 32"));
        assert!(err(parse_vip_address("192.0.2.10/0")).contains("1 to 32"));
        assert!(err(parse_vip_address("2001:db8::1/129")).contains("1 to 128"));
        assert!(err(parse_vip_address("300.0.0.1/24")).contains("not an IPv4 or IPv6"));
        assert!(err(parse_vip_address("127.0.0.5/8")).contains("loopback"));
        assert!(err(parse_vip_address("0.0.0.0/24")).contains("unspecified"));
        assert!(err(parse_vip_address("224.0.0.5/24")).contains("multicast"));
        assert!(err(parse_vip_address("192.0.2.0/24")).contains("network address of 192.0.2.0/24"));
        assert!(err(parse_vip_address("192.0.2.255/24")).contains("broadcast address of"));
        assert!(err(parse_vip_address("2001:db8::/64")).contains("anycast"));
        assert!(err(parse_vip_address("::ffff:192.0.2.1/120")).contains("IPv4-mapped"));
    }

    #[test]
    fn interfaces() {
        assert!(check_interface("eth0").is_ok());
        assert!(check_interface("enp0s31f6").is_ok());
        assert!(check_interface("a23456789012345").is_ok());
        assert!(err(check_interface("a234567890123456")).contains("at most 15"));
        assert!(err(check_interface("")).contains("empty"));
        assert!(err(check_interface("..")).contains("not a valid"));
        assert!(err(check_interface("eth/0")).contains("'/'"));
        assert!(err(check_interface("eth 0")).contains("' '"));
        assert!(err(check_interface("eth0:1")).contains("alias"));
    }

    #[test]
    fn module_files() {
        assert_eq!(
            parse_module_file("./bin/start"),
            Ok(PathBuf::from("bin/start"))
        );
        assert!(err(parse_module_file("/usr/bin/start")).contains("absolute"));
        assert!(err(parse_module_file("../start")).contains("'..'"));
        assert!(err(parse_module_file("bin/")).contains("directory"));
        assert!(err(parse_module_file(".")).contains("directory"));
        assert!(err(parse_module_file("")).contains("empty"));
    }

    #[test]
    fn env_vars() {
        assert!(check_env_name("APP_PORT").is_ok());
        assert!(check_env_name("_x1").is_ok());
        assert!(err(check_env_name("1X")).contains("not starting with a digit"));
        assert!(err(check_env_name("A-B")).contains("not a variable name"));
        assert!(err(check_env_name("MIRRORKIT_NODE")).contains("reserved"));
        assert!(err(check_env_value("a\0b")).contains("NUL"));
        assert!(err(check_env_value(&"x".repeat(4097))).contains("4097 bytes"));
    }

    #[test]
    fn checker_targets() {
        assert!(check_process_name("postgres").is_ok());
        assert!(err(check_process_name("mirrorkit-demo-app")).contains("\"mirrorkit-demo-\""));
        assert!(err(check_process_name("/usr/bin/x")).contains("without directory"));
        assert!(parse_pid_file("app.pid").is_ok());
        assert!(parse_pid_file("/run/app.pid").is_ok());
        assert!(err(parse_pid_file("../app.pid")).contains("'..'"));
        assert!(parse_tcp_address("127.0.0.1:8080").is_ok());
        assert!(parse_tcp_address("[::1]:8080").is_ok());
        assert!(err(parse_tcp_address("localhost:8080")).contains("not resolved"));
        assert!(err(parse_tcp_address("127.0.0.1:0")).contains("port 0"));
        assert!(err(parse_tcp_address("0.0.0.0:80")).contains("127.0.0.1"));
    }
    #[test]
    fn ping_targets() {
        assert_eq!(
            parse_ping_target("10.0.0.1"),
            Ok("10.0.0.1".parse().expect("ip"))
        );
        assert!(parse_ping_target("2001:db8::1").is_ok());
        assert!(parse_ping_target("127.0.0.1").is_ok());
        assert!(err(parse_ping_target("gateway")).contains("not resolved"));
        assert!(err(parse_ping_target("10.0.0.1/24")).contains("write the address alone"));
        assert!(err(parse_ping_target("0.0.0.0")).contains("unspecified"));
        assert!(err(parse_ping_target("::")).contains("unspecified"));
        assert!(err(parse_ping_target("224.0.0.1")).contains("multicast"));
        assert!(err(parse_ping_target("ff02::1")).contains("multicast"));
        assert!(err(parse_ping_target("255.255.255.255")).contains("broadcast"));
        assert!(err(parse_ping_target("fe80::1")).contains("link-local"));
        assert!(err(parse_ping_target("::ffff:10.0.0.1")).contains("IPv4-mapped"));
    }

    #[test]
    fn webhook_urls() {
        let u = parse_webhook_url("https://ops.example/hook").expect("valid");
        assert!(u.is_https());
        assert_eq!(
            (u.host(), u.port(), u.path_and_query()),
            ("ops.example", 443, "/hook")
        );
        assert_eq!(u.userinfo(), None);
        let u = parse_webhook_url("http://10.0.0.5:8080").expect("valid");
        assert_eq!(
            (u.host(), u.port(), u.path_and_query()),
            ("10.0.0.5", 8080, "/")
        );
        let u = parse_webhook_url("http://[2001:db8::5]:9000/a/b?x=1&y=%20").expect("valid");
        assert_eq!(
            (u.host(), u.port(), u.path_and_query()),
            ("2001:db8::5", 9000, "/a/b?x=1&y=%20")
        );
        let u = parse_webhook_url("https://bot:s3cret@hooks.example?token=abc").expect("valid");
        assert_eq!(u.userinfo(), Some("bot:s3cret"));
        assert_eq!(u.path_and_query(), "/?token=abc");
        assert_eq!(u.redacted(), "https://bot:***@hooks.example?token=abc");
        assert_eq!(u.to_string(), u.redacted());
        assert_eq!(u.as_str(), "https://bot:s3cret@hooks.example?token=abc");
        let u = parse_webhook_url("https://s:@h.example/").expect("valid");
        assert_eq!(u.redacted(), "https://s:***@h.example/");

        assert!(err(parse_webhook_url("")).contains("empty"));
        assert!(err(parse_webhook_url("ops.example/hook")).contains("\"https://ops.example/hook\""));
        assert!(err(parse_webhook_url("HTTPS://ops.example/")).contains("lower case"));
        assert!(err(parse_webhook_url("ftp://ops.example/")).contains("not supported"));
        assert!(err(parse_webhook_url("https://ops.example/a b")).contains("%20"));
        assert!(err(parse_webhook_url("https://ops.example/\u{7}")).contains("control"));
        assert!(err(parse_webhook_url("https://ops.example/é")).contains("percent-encoded"));
        assert!(err(parse_webhook_url("https://ops.example/#top")).contains("fragment"));
        assert!(err(parse_webhook_url("https:///hook")).contains("no host"));
        assert!(err(parse_webhook_url("https://ops.example:0/")).contains("port 0"));
        assert!(err(parse_webhook_url("https://ops.example:99999/")).contains("1 to 65535"));
        assert!(err(parse_webhook_url("https://ops.example:/")).contains("1 to 65535"));
        assert!(err(parse_webhook_url("https://2001:db8::1/")).contains("between brackets"));
        assert!(err(parse_webhook_url("https://[2001:db8::1/")).contains("without ']'"));
        assert!(err(parse_webhook_url("https://[zz]/")).contains("not an IPv6"));
        assert!(err(parse_webhook_url("https://300.1.1.1/")).contains("not a valid IPv4"));
        assert!(err(parse_webhook_url("https://0.0.0.0/")).contains("cannot be connected"));
        assert!(err(parse_webhook_url("https://-bad.example/")).contains("not a valid host name"));
        assert!(err(parse_webhook_url("https://a..b/")).contains("not a valid host name"));
        assert!(err(parse_webhook_url("https://ops.example/100%")).contains("%25"));
        assert!(err(parse_webhook_url("https://ops.example/a<b")).contains("%3C"));
        assert!(err(parse_webhook_url("https://@ops.example/")).contains("remove the '@'"));
        let long = format!("https://ops.example/{}", "a".repeat(WEBHOOK_URL_MAX_BYTES));
        assert!(err(parse_webhook_url(&long)).contains("at most 2048"));
    }
}
