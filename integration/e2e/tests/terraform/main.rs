//! Offline checks of `terraform/` (the terraform binary is not available in
//! CI): every `.tf` file parses as HCL, and across the module tree
//! - every `var.X` a module uses is declared in that module,
//! - every `local.X` is defined and every `module.M.O` names a called module
//!   and an output that module declares,
//! - every `module` block's local `source` directory exists and holds `.tf`
//!   files,
//! - every argument passed to a child module is a variable declared there,
//!   and every required variable (no `default`) of the child is passed,
//! - every `templatefile("${path.module}/…", {…})` names an existing file
//!   that parses as a template and whose variables are all passed.
//!
//! Failures name the file and the offending name. A second test runs the
//! checker on a broken fixture to show that it catches each kind of error.

mod model;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hcl::expr::Expression;
use hcl::template::Template;
use model::*;

/// Runs every check on the module tree under `root`; returns the failures.
fn check_tree(root: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    let dirs = module_dirs(root);
    if dirs.is_empty() {
        errors.push(format!("{}: no .tf files", root.display()));
        return errors;
    }
    let modules: BTreeMap<PathBuf, Module> = dirs
        .iter()
        .map(|d| (d.clone(), load_module(d, &mut errors)))
        .collect();

    for (dir, module) in &modules {
        let calls: BTreeMap<&str, &ModuleCall> =
            module.calls.iter().map(|c| (c.name.as_str(), c)).collect();

        for (file, kind, name) in &module.refs {
            let f = file.display();
            match *kind {
                "var" if !module.variables.contains_key(name) => errors.push(format!(
                    "{f}: var.{name} is used but no variable \"{name}\" is declared in {}",
                    dir.display()
                )),
                "local" if !module.locals.contains(name) => errors.push(format!(
                    "{f}: local.{name} is used but not defined in any locals block of {}",
                    dir.display()
                )),
                "module" => {
                    let (called, output) = name.split_once('.').unwrap_or((name, ""));
                    match calls.get(called) {
                        None => errors.push(format!(
                            "{f}: module.{called} is used but no module \"{called}\" block exists"
                        )),
                        Some(call) => {
                            let child = call
                                .source
                                .as_deref()
                                .and_then(|s| dir.join(s).canonicalize().ok())
                                .and_then(|p| modules.get(&p));
                            if let Some(child) = child {
                                if !output.is_empty() && !child.outputs.contains(output) {
                                    errors.push(format!(
                                        "{f}: module.{called}.{output} is used but module \"{called}\" ({}) declares no output \"{output}\"",
                                        call.source.as_deref().unwrap_or_default()
                                    ));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }

        for call in &module.calls {
            let f = call.file.display();
            let Some(source) = &call.source else {
                errors.push(format!("{f}: module \"{}\" has no source", call.name));
                continue;
            };
            if !(source.starts_with("./") || source.starts_with("../")) {
                // A registry or remote source: nothing local to check.
                continue;
            }
            let child_dir = dir.join(source);
            let Some(child) = child_dir.canonicalize().ok().and_then(|p| modules.get(&p)) else {
                errors.push(format!(
                    "{f}: module \"{}\": source \"{source}\" is not a directory with .tf files ({})",
                    call.name,
                    child_dir.display()
                ));
                continue;
            };
            for arg in &call.arguments {
                if !child.variables.contains_key(arg) {
                    errors.push(format!(
                        "{f}: module \"{}\" passes \"{arg}\" but {source} declares no variable \"{arg}\"",
                        call.name
                    ));
                }
            }
            for (var, (var_file, required)) in &child.variables {
                if *required && !call.arguments.contains(var) {
                    errors.push(format!(
                        "{f}: module \"{}\" does not pass required variable \"{var}\" (declared without default in {})",
                        call.name,
                        var_file.display()
                    ));
                }
            }
        }

        for call in &module.templatefiles {
            let f = call.file.display();
            let Some(path) = &call.path else {
                errors.push(format!(
                    "{f}: templatefile path must be \"${{path.module}}/NAME\" so it can be checked"
                ));
                continue;
            };
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(e) => {
                    errors.push(format!(
                        "{f}: templatefile names {}, which cannot be read: {e}",
                        path.display()
                    ));
                    continue;
                }
            };
            let template: Template = match text.parse() {
                Ok(t) => t,
                Err(e) => {
                    errors.push(format!(
                        "{}: does not parse as a Terraform template: {e}",
                        path.display()
                    ));
                    continue;
                }
            };
            let mut used = BTreeSet::new();
            template_variables(&template, &BTreeSet::new(), &mut used);
            if let Some(keys) = &call.keys {
                for var in used.difference(keys) {
                    errors.push(format!(
                        "{}: uses ${{{var}}} but the templatefile call in {f} does not pass \"{var}\"",
                        path.display()
                    ));
                }
            }
        }
    }
    errors
}

#[test]
fn terraform_modules_are_consistent() {
    let root = terraform_dir();
    let root = root
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    let dirs = module_dirs(&root);
    assert!(
        dirs.len() >= 2,
        "expected a root module and child modules under {}, found {dirs:?}",
        root.display()
    );
    let errors = check_tree(&root);
    assert!(
        errors.is_empty(),
        "terraform/ has {} problem(s):\n  {}",
        errors.len(),
        errors.join("\n  ")
    );
    assert!(
        root.join("terraform.tfvars.example").is_file(),
        "terraform/terraform.tfvars.example is missing"
    );
}

#[test]
fn every_variable_has_a_description_and_root_variables_are_validated() {
    let root = terraform_dir().canonicalize().unwrap();
    let mut errors = Vec::new();
    for dir in module_dirs(&root) {
        for file in tf_files(&dir) {
            let body = hcl::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
            for block in body.blocks().filter(|b| b.identifier() == "variable") {
                let name = label(block, 0).unwrap_or_default();
                let attrs: BTreeSet<&str> = block.body().attributes().map(|a| a.key()).collect();
                if !attrs.contains("description") || !attrs.contains("type") {
                    errors.push(format!(
                        "{}: variable \"{name}\" needs a description and a type",
                        file.display()
                    ));
                }
                // Root variables are what users set: free-form ones (tags,
                // toggles) aside, each is validated.
                let free_form = matches!(
                    block.body().attributes().find(|a| a.key() == "type").map(|a| a.expr()),
                    Some(Expression::Variable(v)) if v.as_str() == "bool"
                ) || name == "tags";
                if dir == root
                    && !free_form
                    && !block
                        .body()
                        .blocks()
                        .any(|b| b.identifier() == "validation")
                {
                    errors.push(format!(
                        "{}: root variable \"{name}\" has no validation block",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn checker_catches_each_kind_of_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::create_dir_all(root.join("modules/child")).unwrap();
    std::fs::write(
        root.join("main.tf"),
        r#"
variable "declared" {
  description = "d"
  type        = string
}
locals {
  l = "${var.declared}-${var.undeclared_in_template}"
}
module "child" {
  source  = "./modules/child"
  known   = var.declared
  unknown = local.l
}
module "gone" {
  source = "./modules/missing"
}
output "o" {
  value = [module.child.nope, local.missing, var.undeclared]
}
"#,
    )
    .unwrap();
    std::fs::write(
        root.join("modules/child/main.tf"),
        r#"
variable "known" {
  description = "k"
  type        = string
}
variable "required_but_not_passed" {
  description = "r"
  type        = string
}
variable "optional" {
  description = "o"
  type        = string
  default     = "x"
}
resource "null_resource" "r" {
  triggers = { t = templatefile("${path.module}/user_data.tftpl", { a = var.known }) }
}
output "out" {
  value = var.optional
}
"#,
    )
    .unwrap();
    std::fs::write(
        root.join("modules/child/user_data.tftpl"),
        "echo ${a} ${b} $HOME\n%{ for x in [a] }${x}%{ endfor }\n",
    )
    .unwrap();

    let errors = check_tree(&root).join("\n");
    for expected in [
        "var.undeclared_in_template is used",
        "var.undeclared is used",
        "local.missing is used",
        "module.child.nope is used",
        "passes \"unknown\"",
        "does not pass required variable \"required_but_not_passed\"",
        "module \"gone\": source \"./modules/missing\" is not a directory",
        "uses ${b}",
    ] {
        assert!(
            errors.contains(expected),
            "expected an error containing {expected:?}, got:\n{errors}"
        );
    }
    for unexpected in ["var.declared ", "\"optional\"", "uses ${a}", "uses ${x}"] {
        assert!(
            !errors.contains(unexpected),
            "unexpected error containing {unexpected:?}:\n{errors}"
        );
    }
    // Each message names the file it is about.
    assert!(errors.contains(&format!("{}", root.join("main.tf").display())));
}
