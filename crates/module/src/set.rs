//! Rules between the modules of one node: each module checked alone may still clash with
//! another (same name, same directory, same virtual IP).

use crate::load::LoadedModule;
use crate::problem::Problem;

/// Problems between `modules` (each already valid on its own), placed in the file of the module
/// that comes later in `modules`, naming the earlier one.
pub fn check_module_set(modules: &[LoadedModule]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (j, b) in modules.iter().enumerate() {
        for a in &modules[..j] {
            let other = a.file.display();
            if a.config.name == b.config.name {
                problems.push(b.problem(
                    "name",
                    format!(
                        "module name {:?} is already used by {other}: module names must differ",
                        b.config.name
                    ),
                ));
            }
            for (bi, bm) in b.config.mirrors.iter().enumerate() {
                for am in &a.config.mirrors {
                    let clash = if am.dir == bm.dir {
                        "is also replicated by"
                    } else if bm.dir.starts_with(&am.dir) {
                        "is inside a directory replicated by"
                    } else if am.dir.starts_with(&bm.dir) {
                        "contains a directory replicated by"
                    } else {
                        continue;
                    };
                    problems.push(b.problem(
                        &format!("mirror[{bi}].dir"),
                        format!(
                            "{} {clash} module {:?} ({other}: {}): a directory can belong to one \
                             module only",
                            bm.dir.display(),
                            a.config.name,
                            am.dir.display()
                        ),
                    ));
                }
            }
            for (bi, bv) in b.config.vips.iter().enumerate() {
                if a.config
                    .vips
                    .iter()
                    .any(|av| av.address.addr == bv.address.addr)
                {
                    problems.push(b.problem(
                        &format!("vip[{bi}].address"),
                        format!(
                            "{} is also a virtual IP of module {:?} ({other}): modules move \
                             independently, so each needs its own address",
                            bv.address.addr, a.config.name
                        ),
                    ));
                }
            }
        }
    }
    problems
}
