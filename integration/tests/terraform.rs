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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hcl::expr::{Expression, ObjectKey, Operation, TemplateExpr, TraversalOperator};
use hcl::template::{Directive, Element, Template};
use hcl::{Block, Body};

/// Meta-arguments of a `module` block that are not input variables.
const MODULE_META_ARGUMENTS: &[&str] = &[
    "source",
    "version",
    "providers",
    "count",
    "for_each",
    "depends_on",
];

/// One Terraform module: a directory of `.tf` files.
#[derive(Default)]
struct Module {
    /// variable name -> (file, required)
    variables: BTreeMap<String, (PathBuf, bool)>,
    outputs: BTreeSet<String>,
    locals: BTreeSet<String>,
    calls: Vec<ModuleCall>,
    /// (file, kind, name) of every `var.`, `local.` and `module.` reference;
    /// for `module.` references the name is `M.O` (or `M` alone).
    refs: Vec<(PathBuf, &'static str, String)>,
    templatefiles: Vec<TemplateFileCall>,
}

struct ModuleCall {
    file: PathBuf,
    name: String,
    source: Option<String>,
    arguments: BTreeSet<String>,
}

struct TemplateFileCall {
    file: PathBuf,
    /// The path with `${path.module}` resolved, when it is that simple.
    path: Option<PathBuf>,
    /// Keys of the variables object, when it is a literal object.
    keys: Option<BTreeSet<String>>,
}

fn terraform_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration crate has a parent directory")
        .join("terraform")
}

/// Every directory under `root` (itself included) that holds `.tf` files.
fn module_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut has_tf = false;
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if !name.starts_with('.') {
                    stack.push(path);
                }
            } else if name.ends_with(".tf") {
                has_tf = true;
            }
        }
        if has_tf {
            dirs.push(dir);
        }
    }
    dirs.sort();
    dirs
}

fn tf_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "tf"))
        .collect();
    files.sort();
    files
}

/// Parses every `.tf` file of `dir`; parse errors are pushed to `errors`.
fn load_module(dir: &Path, errors: &mut Vec<String>) -> Module {
    let mut module = Module::default();
    for file in tf_files(dir) {
        let text = std::fs::read_to_string(&file).unwrap();
        let body: Body = match hcl::parse(&text) {
            Ok(body) => body,
            Err(e) => {
                errors.push(format!("{}: does not parse as HCL: {e}", file.display()));
                continue;
            }
        };
        for block in body.blocks() {
            collect_block(dir, &file, block, &mut module, errors);
        }
        for attr in body.attributes() {
            walk_expr(dir, &file, &attr.expr, &mut module, errors);
        }
    }
    module
}

fn label(block: &Block, i: usize) -> Option<&str> {
    block.labels().get(i).map(|l| l.as_str())
}

fn collect_block(
    dir: &Path,
    file: &Path,
    block: &Block,
    module: &mut Module,
    errors: &mut Vec<String>,
) {
    match block.identifier() {
        "variable" => {
            let name = label(block, 0).unwrap_or_default().to_owned();
            let required = !block.body().attributes().any(|a| a.key() == "default");
            if let Some((first, _)) = module
                .variables
                .insert(name.clone(), (file.to_owned(), required))
            {
                errors.push(format!(
                    "{}: variable \"{name}\" is declared twice (also in {})",
                    file.display(),
                    first.display()
                ));
            }
        }
        "output" => {
            module
                .outputs
                .insert(label(block, 0).unwrap_or_default().to_owned());
        }
        "locals" => {
            for attr in block.body().attributes() {
                module.locals.insert(attr.key().to_owned());
            }
        }
        "module" => {
            let name = label(block, 0).unwrap_or_default().to_owned();
            let mut source = None;
            let mut arguments = BTreeSet::new();
            for attr in block.body().attributes() {
                if attr.key() == "source" {
                    source = match attr.expr() {
                        Expression::String(s) => Some(s.clone()),
                        _ => {
                            errors.push(format!(
                                "{}: module \"{name}\": source must be a literal string",
                                file.display()
                            ));
                            None
                        }
                    };
                } else if !MODULE_META_ARGUMENTS.contains(&attr.key()) {
                    arguments.insert(attr.key().to_owned());
                }
            }
            module.calls.push(ModuleCall {
                file: file.to_owned(),
                name,
                source,
                arguments,
            });
        }
        _ => {}
    }
    walk_body(dir, file, block.body(), module, errors);
}

fn walk_body(dir: &Path, file: &Path, body: &Body, module: &mut Module, errors: &mut Vec<String>) {
    for attr in body.attributes() {
        walk_expr(dir, file, &attr.expr, module, errors);
    }
    for block in body.blocks() {
        walk_body(dir, file, block.body(), module, errors);
    }
}

/// Records the references in `expr` (and in templates inside it).
fn walk_expr(
    dir: &Path,
    file: &Path,
    expr: &Expression,
    module: &mut Module,
    errors: &mut Vec<String>,
) {
    match expr {
        Expression::Array(items) => {
            for item in items {
                walk_expr(dir, file, item, module, errors);
            }
        }
        Expression::Object(object) => {
            for (key, value) in object {
                if let ObjectKey::Expression(key) = key {
                    walk_expr(dir, file, key, module, errors);
                }
                walk_expr(dir, file, value, module, errors);
            }
        }
        Expression::TemplateExpr(template) => match Template::from_expr(template) {
            Ok(template) => walk_template(dir, file, &template, module, errors),
            Err(e) => errors.push(format!(
                "{}: template {template} does not parse: {e}",
                file.display()
            )),
        },
        Expression::Traversal(traversal) => {
            if let Expression::Variable(root) = &traversal.expr {
                let attrs: Vec<&str> = traversal
                    .operators
                    .iter()
                    .map_while(|op| match op {
                        TraversalOperator::GetAttr(ident) => Some(ident.as_str()),
                        _ => None,
                    })
                    .collect();
                let kind = match root.as_str() {
                    "var" => Some("var"),
                    "local" => Some("local"),
                    "module" => Some("module"),
                    _ => None,
                };
                if let (Some(kind), Some(first)) = (kind, attrs.first()) {
                    let name = match (kind, attrs.get(1)) {
                        ("module", Some(output)) => format!("{first}.{output}"),
                        _ => (*first).to_owned(),
                    };
                    module.refs.push((file.to_owned(), kind, name));
                }
            } else {
                walk_expr(dir, file, &traversal.expr, module, errors);
            }
            for op in &traversal.operators {
                if let TraversalOperator::Index(index) = op {
                    walk_expr(dir, file, index, module, errors);
                }
            }
        }
        Expression::FuncCall(call) => {
            if call.name.name.as_str() == "templatefile" {
                module
                    .templatefiles
                    .push(templatefile_call(dir, file, &call.args));
            }
            for arg in &call.args {
                walk_expr(dir, file, arg, module, errors);
            }
        }
        Expression::Parenthesis(inner) => walk_expr(dir, file, inner, module, errors),
        Expression::Conditional(cond) => {
            walk_expr(dir, file, &cond.cond_expr, module, errors);
            walk_expr(dir, file, &cond.true_expr, module, errors);
            walk_expr(dir, file, &cond.false_expr, module, errors);
        }
        Expression::Operation(op) => match op.as_ref() {
            Operation::Unary(unary) => walk_expr(dir, file, &unary.expr, module, errors),
            Operation::Binary(binary) => {
                walk_expr(dir, file, &binary.lhs_expr, module, errors);
                walk_expr(dir, file, &binary.rhs_expr, module, errors);
            }
        },
        Expression::ForExpr(for_expr) => {
            walk_expr(dir, file, &for_expr.collection_expr, module, errors);
            if let Some(key) = &for_expr.key_expr {
                walk_expr(dir, file, key, module, errors);
            }
            walk_expr(dir, file, &for_expr.value_expr, module, errors);
            if let Some(cond) = &for_expr.cond_expr {
                walk_expr(dir, file, cond, module, errors);
            }
        }
        _ => {}
    }
}

fn walk_template(
    dir: &Path,
    file: &Path,
    template: &Template,
    module: &mut Module,
    errors: &mut Vec<String>,
) {
    for element in template.elements() {
        match element {
            Element::Literal(_) => {}
            Element::Interpolation(interp) => walk_expr(dir, file, &interp.expr, module, errors),
            Element::Directive(directive) => match directive.as_ref() {
                Directive::If(d) => {
                    walk_expr(dir, file, &d.cond_expr, module, errors);
                    walk_template(dir, file, &d.true_template, module, errors);
                    if let Some(f) = &d.false_template {
                        walk_template(dir, file, f, module, errors);
                    }
                }
                Directive::For(d) => {
                    walk_expr(dir, file, &d.collection_expr, module, errors);
                    walk_template(dir, file, &d.template, module, errors);
                }
            },
        }
    }
}

/// `templatefile("${path.module}/NAME", { k = v, … })`.
fn templatefile_call(dir: &Path, file: &Path, args: &[Expression]) -> TemplateFileCall {
    let path = match args.first() {
        Some(Expression::TemplateExpr(t)) => match t.as_ref() {
            TemplateExpr::QuotedString(s) => {
                s.strip_prefix("${path.module}/").map(|rest| dir.join(rest))
            }
            _ => None,
        },
        Some(Expression::String(s)) if Path::new(s).is_relative() => Some(dir.join(s)),
        _ => None,
    };
    let keys = match args.get(1) {
        Some(Expression::Object(object)) => Some(
            object
                .keys()
                .filter_map(|k| match k {
                    ObjectKey::Identifier(i) => Some(i.as_str().to_owned()),
                    ObjectKey::Expression(Expression::String(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    };
    TemplateFileCall {
        file: file.to_owned(),
        path,
        keys,
    }
}

/// Top-level variables a template file uses (not counting `for` locals).
fn template_variables(template: &Template, bound: &BTreeSet<String>, out: &mut BTreeSet<String>) {
    fn expr_vars(expr: &Expression, bound: &BTreeSet<String>, out: &mut BTreeSet<String>) {
        match expr {
            Expression::Variable(v) if !bound.contains(v.as_str()) => {
                out.insert(v.as_str().to_owned());
            }
            Expression::Traversal(t) => expr_vars(&t.expr, bound, out),
            Expression::FuncCall(c) => c.args.iter().for_each(|a| expr_vars(a, bound, out)),
            Expression::Parenthesis(e) => expr_vars(e, bound, out),
            Expression::Conditional(c) => {
                expr_vars(&c.cond_expr, bound, out);
                expr_vars(&c.true_expr, bound, out);
                expr_vars(&c.false_expr, bound, out);
            }
            Expression::Operation(op) => match op.as_ref() {
                Operation::Unary(u) => expr_vars(&u.expr, bound, out),
                Operation::Binary(b) => {
                    expr_vars(&b.lhs_expr, bound, out);
                    expr_vars(&b.rhs_expr, bound, out);
                }
            },
            Expression::Array(items) => items.iter().for_each(|i| expr_vars(i, bound, out)),
            _ => {}
        }
    }
    for element in template.elements() {
        match element {
            Element::Literal(_) => {}
            Element::Interpolation(i) => expr_vars(&i.expr, bound, out),
            Element::Directive(d) => match d.as_ref() {
                Directive::If(d) => {
                    expr_vars(&d.cond_expr, bound, out);
                    template_variables(&d.true_template, bound, out);
                    if let Some(f) = &d.false_template {
                        template_variables(f, bound, out);
                    }
                }
                Directive::For(d) => {
                    expr_vars(&d.collection_expr, bound, out);
                    let mut inner = bound.clone();
                    inner.insert(d.value_var.as_str().to_owned());
                    if let Some(k) = &d.key_var {
                        inner.insert(k.as_str().to_owned());
                    }
                    template_variables(&d.template, &inner, out);
                }
            },
        }
    }
}

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
