//! The demo module (`modules/demo`) as a cluster on one machine runs it (`mirrorkit demo`, the
//! namespace tests and the failover benchmark): the same scripts, with its own name, replicated
//! directory, virtual IP, port and application path.

use std::net::IpAddr;
use std::path::Path;

/// What differs from the shipped `modules/demo/module.toml`.
#[derive(Clone, Debug)]
pub struct DemoModule<'a> {
    pub name: &'a str,
    /// The replicated directory as the module declares it (a cluster on one machine takes it
    /// beneath each node's `data_root`).
    pub dir: &'a str,
    pub vip: IpAddr,
    pub prefix_len: u8,
    pub interface: &'a str,
    pub port: u16,
    /// The `mirrorkit-demo-app` executable.
    pub app: &'a Path,
    /// `default` or `fast`.
    pub heartbeat: &'a str,
    pub default_primary: Option<&'a str>,
    /// The shipped module's two checkers (the port answers; the process is alive).
    pub checkers: bool,
    /// More TOML appended as is (tests: other checkers, `[notify]`).
    pub extra: &'a str,
    /// More lines of `[scripts]` (tests: the other slots).
    pub more_scripts: &'a str,
    /// More lines of the `[[mirror]]` table (tests: `include`, `exclude`).
    pub mirror_extra: &'a str,
}

/// The module's `module.toml` (its scripts are the shipped `start_prim` and `stop_prim`).
pub fn module_toml(m: &DemoModule) -> String {
    let default_primary = m
        .default_primary
        .map(|n| format!("default_primary = \"{n}\"\n"))
        .unwrap_or_default();
    format!(
        "# The demo module (modules/demo) as run on a cluster of one machine.\n\
         name = \"{name}\"\n\
         description = \"Demo notes application on port {port}\"\n\
         failback = false\n\
         heartbeat = \"{heartbeat}\"\n\
         {default_primary}\n\
         [[mirror]]\n\
         dir = \"{dir}\"\n{mirror_extra}\n\
         [[vip]]\n\
         address = \"{vip}/{prefix}\"\n\
         interface = \"{interface}\"\n\n\
         [scripts]\n\
         start_prim = {{ path = \"start_prim\", timeout_ms = 30000 }}\n\
         stop_prim = {{ path = \"stop_prim\", timeout_ms = 30000 }}\n\
         {more_scripts}\n\
         [env]\n\
         DEMO_LISTEN = \"0.0.0.0:{port}\"\n\
         DEMO_APP = \"{app}\"\n\
         {checkers}{extra}",
        checkers = if m.checkers {
            format!(
                "\n[[checker]]\n\
                 name = \"http\"\n\
                 kind = \"tcp\"\n\
                 address = \"127.0.0.1:{port}\"\n\
                 interval_ms = 2000\n\
                 timeout_ms = 1000\n\
                 retries = 2\n\
                 action = \"restart\"\n\n\
                 [[checker]]\n\
                 name = \"process\"\n\
                 kind = \"process\"\n\
                 pid_file = \"demo-app.pid\"\n\
                 interval_ms = 2000\n\
                 retries = 0\n\
                 action = \"restart\"\n",
                port = m.port
            )
        } else {
            String::new()
        },
        extra = m.extra,
        more_scripts = m.more_scripts,
        mirror_extra = m.mirror_extra,
        name = m.name,
        port = m.port,
        heartbeat = m.heartbeat,
        dir = m.dir,
        vip = m.vip,
        prefix = m.prefix_len,
        interface = m.interface,
        app = m.app.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_module_text_is_a_valid_module() {
        let app = Path::new("/usr/local/bin/mirrorkit-demo-app");
        let m = DemoModule {
            name: "shop",
            dir: "/var/lib/shop",
            vip: "10.77.0.80".parse().unwrap(),
            prefix_len: 24,
            interface: "eth0",
            port: 8081,
            app,
            heartbeat: "fast",
            default_primary: Some("beta"),
            checkers: true,
            extra: "",
            more_scripts: "prestart = \"prestart\"\n",
            mirror_extra: "",
        };
        let text = module_toml(&m);
        let nodes = ["alpha".to_owned(), "beta".to_owned()];
        let (c, _) =
            mirrorkit_module::check_module_source(&text, Path::new("module.toml"), Some(&nodes))
                .unwrap_or_else(|p| panic!("{p:?}\n{text}"));
        assert_eq!(c.name, "shop");
        assert_eq!(c.default_primary.as_deref(), Some("beta"));
        assert_eq!(c.env["DEMO_LISTEN"], "0.0.0.0:8081");
        assert_eq!(c.vips[0].address.to_string(), "10.77.0.80/24");
        assert_eq!(c.heartbeat, mirrorkit_module::HeartbeatProfile::Fast);
        assert_eq!(c.checkers.len(), 2);
        assert_eq!(c.checkers[0].name, "http");
        assert!(c
            .scripts
            .get(mirrorkit_module::ScriptKind::Prestart)
            .is_some());
    }
}
