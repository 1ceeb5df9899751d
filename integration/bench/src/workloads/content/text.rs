//! Text: prose-like words, source code, logs and markup, in the styles a
//! guest's files and buffers hold.

use super::super::rng::Rng;
use super::{Cursor, TextStyle};

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "be",
    "on",
    "not",
    "this",
    "by",
    "are",
    "or",
    "from",
    "at",
    "which",
    "an",
    "but",
    "have",
    "all",
    "can",
    "will",
    "if",
    "one",
    "their",
    "when",
    "there",
    "use",
    "each",
    "other",
    "more",
    "these",
    "some",
    "would",
    "into",
    "time",
    "only",
    "new",
    "also",
    "file",
    "data",
    "value",
    "return",
    "system",
    "function",
    "user",
    "server",
    "request",
    "memory",
    "page",
    "process",
    "thread",
    "error",
    "result",
    "object",
    "string",
    "number",
    "list",
    "table",
    "index",
    "query",
    "cache",
    "buffer",
    "network",
    "connection",
    "client",
    "session",
    "service",
    "module",
    "package",
    "version",
    "option",
    "default",
    "config",
    "path",
    "directory",
    "kernel",
    "device",
    "driver",
    "interface",
    "method",
    "class",
    "type",
    "field",
    "record",
    "update",
    "delete",
    "insert",
    "select",
    "order",
    "account",
    "customer",
    "product",
    "price",
    "status",
    "event",
    "message",
    "handler",
    "callback",
    "timeout",
    "retry",
    "limit",
    "offset",
    "length",
    "size",
    "count",
    "start",
    "stop",
    "read",
    "write",
    "open",
    "close",
    "send",
    "receive",
    "parse",
    "format",
    "example",
    "following",
    "described",
    "section",
    "information",
    "available",
    "however",
    "because",
    "between",
    "without",
    "through",
    "should",
    "different",
    "important",
    "number",
];
const LEVELS: &[&str] = &["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR", "NOTICE"];
const MODULES: &[&str] = &[
    "http",
    "db.pool",
    "worker",
    "scheduler",
    "auth",
    "cache",
    "api.v2",
    "storage",
    "metrics",
    "kernel",
    "systemd[1]",
    "sshd[812]",
    "cron[433]",
    "nginx",
    "app.orders",
];
const LOG_MESSAGES: &[&str] = &[
    "request completed status=200 method=GET path=/api/v2/",
    "connection accepted from 10.0.3.",
    "cache miss for key session:",
    "slow query detected duration exceeded threshold table=",
    "worker finished job queue=default job=",
    "Started Session of user ",
    "authentication succeeded for user ",
    "retrying after timeout attempt=",
    "flushing dirty buffers to disk count=",
    "GET /static/css/main.css HTTP/1.1\" 200 ",
];
const TAGS: &[&str] = &[
    "<div class=\"",
    "<span class=\"",
    "<a href=\"/",
    "<li>",
    "</li>\n",
    "</div>\n",
    "<p>",
    "</p>\n",
    "<img src=\"/static/img/",
    "function ",
    "var ",
    "return ",
    "const ",
    "  color: #",
    "  margin: ",
    "px;\n",
    "}\n",
    ".card-",
    "{\n",
    "=> {",
    "document.",
    "this.",
    "\">",
];

pub(super) fn word(rng: &mut Rng) -> &'static str {
    // Frequent words dominate text (roughly Zipf): favour the head.
    let n = WORDS.len() as u64;
    let k = rng.below(n).min(rng.below(n));
    WORDS[k as usize]
}

pub(super) fn fill_text(page: &mut [u8], style: TextStyle, rng: &mut Rng) {
    let mut c = Cursor::new(page);
    let mut clock = 1_700_000_000 + rng.below(10_000_000);
    while !c.full() {
        match style {
            TextStyle::Log => {
                clock += rng.below(3);
                c.number(clock);
                c.put(b".");
                c.number(rng.range(100_000, 999_999));
                c.put(b" ");
                c.put(rng.pick(LEVELS).as_bytes());
                c.put(b" ");
                c.put(rng.pick(MODULES).as_bytes());
                c.put(b": ");
                // Messages come from a few templates with variable parts.
                let template = rng
                    .index(LOG_MESSAGES.len())
                    .min(rng.index(LOG_MESSAGES.len()));
                c.put(LOG_MESSAGES[template].as_bytes());
                c.put(word(rng).as_bytes());
                c.put(b" ");
                if rng.chance(0.6) {
                    c.put(b"id=");
                    c.number(rng.below(1 << 32));
                    c.put(b" ms=");
                    c.number(rng.below(2000));
                }
                c.put(b"\n");
            }
            TextStyle::Markup => {
                if rng.chance(0.15) {
                    c.put(b"\n<div class=\"product-card\"><a class=\"product-link\" href=\"/products/");
                }
                c.put(rng.pick(TAGS).as_bytes());
                for _ in 0..rng.range(1, 4) {
                    c.put(word(rng).as_bytes());
                    c.put(if rng.chance(0.3) { b"-" } else { b" " });
                }
                if rng.chance(0.3) {
                    c.number(rng.below(1000));
                }
            }
            TextStyle::Prose => {
                for _ in 0..rng.range(6, 20) {
                    c.put(word(rng).as_bytes());
                    c.put(b" ");
                }
                c.put(if rng.chance(0.2) { b".\n\n" } else { b". " });
            }
            TextStyle::Config => {
                let indent = rng.below(4) as usize * 4;
                c.put(&b"                "[..indent]);
                c.put(word(rng).as_bytes());
                c.put(b"_");
                c.put(word(rng).as_bytes());
                c.put(if rng.chance(0.5) { b" = " } else { b"(" });
                if rng.chance(0.5) {
                    c.number(rng.below(65536));
                } else {
                    c.put(b"\"");
                    c.put(word(rng).as_bytes());
                    c.put(b"\"");
                }
                c.put(b"\n");
            }
        }
    }
}
