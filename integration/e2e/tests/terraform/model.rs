//! The module tree of `terraform/` as the checks see it: every `.tf` file
//! parsed with hcl-rs, and per module its variables, outputs, locals, module
//! calls, references and `templatefile` calls.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hcl::expr::{Expression, ObjectKey, Operation, TemplateExpr, TraversalOperator};
use hcl::template::{Directive, Element, Template};
use hcl::{Block, Body};

/// Meta-arguments of a `module` block that are not input variables.
pub const MODULE_META_ARGUMENTS: &[&str] = &[
    "source",
    "version",
    "providers",
    "count",
    "for_each",
    "depends_on",
];

/// One Terraform module: a directory of `.tf` files.
#[derive(Default)]
pub struct Module {
    /// variable name -> (file, required)
    pub variables: BTreeMap<String, (PathBuf, bool)>,
    pub outputs: BTreeSet<String>,
    pub locals: BTreeSet<String>,
    pub calls: Vec<ModuleCall>,
    /// (file, kind, name) of every `var.`, `local.` and `module.` reference;
    /// for `module.` references the name is `M.O` (or `M` alone).
    pub refs: Vec<(PathBuf, &'static str, String)>,
    pub templatefiles: Vec<TemplateFileCall>,
}

pub struct ModuleCall {
    pub file: PathBuf,
    pub name: String,
    pub source: Option<String>,
    pub arguments: BTreeSet<String>,
}

pub struct TemplateFileCall {
    pub file: PathBuf,
    /// The path with `${path.module}` resolved, when it is that simple.
    pub path: Option<PathBuf>,
    /// Keys of the variables object, when it is a literal object.
    pub keys: Option<BTreeSet<String>>,
}

pub fn terraform_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../terraform")
}

/// Every directory under `root` (itself included) that holds `.tf` files.
pub fn module_dirs(root: &Path) -> Vec<PathBuf> {
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

pub fn tf_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "tf"))
        .collect();
    files.sort();
    files
}

/// Parses every `.tf` file of `dir`; parse errors are pushed to `errors`.
pub fn load_module(dir: &Path, errors: &mut Vec<String>) -> Module {
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

pub fn label(block: &Block, i: usize) -> Option<&str> {
    block.labels().get(i).map(|l| l.as_str())
}

pub fn collect_block(
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

pub fn walk_body(
    dir: &Path,
    file: &Path,
    body: &Body,
    module: &mut Module,
    errors: &mut Vec<String>,
) {
    for attr in body.attributes() {
        walk_expr(dir, file, &attr.expr, module, errors);
    }
    for block in body.blocks() {
        walk_body(dir, file, block.body(), module, errors);
    }
}

/// Records the references in `expr` (and in templates inside it).
pub fn walk_expr(
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

pub fn walk_template(
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
pub fn templatefile_call(dir: &Path, file: &Path, args: &[Expression]) -> TemplateFileCall {
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
pub fn template_variables(
    template: &Template,
    bound: &BTreeSet<String>,
    out: &mut BTreeSet<String>,
) {
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
