//! `docs/openapi.yaml`, the OpenAPI document of the HTTP API, is generated here from the
//! descriptors of `proto/wsgate/v1/gateway.proto` (the same ones the server's JSON
//! mapping and reflection come from, comments included), so it cannot drift from the
//! contract: a method, field, type or comment changed in the proto changes the document.
//! The test also holds the server's table of HTTP methods to the proto's methods.
//!
//! When the file differs from what the proto gives, the test rewrites it and fails (so
//! the change shows in `git diff` to review and commit); under CI it only fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorProto, SourceCodeInfo};
use yaml_rust2::{Yaml, YamlLoader};

const PROTO_FILE: &str = "wsgate/v1/gateway.proto";
const PACKAGE: &str = "wsgate.v1";
const SERVICE: &str = "Gateway";

const INTRO: &str = "Every `wsgate.v1.Gateway` method as `POST /api/v1/<method>` (the gRPC \
method name in snake_case), on the control listener (`server.grpc_listen`) beside gRPC, \
behind the same API keys (`Authorization: Bearer <key>`), with the same validation and \
results.\n\nBodies are the proto3 JSON mapping of the method's request and response \
messages: field names as in the proto (lowerCamelCase names are accepted on input too), \
64-bit integers as decimal strings (JSON numbers are accepted on input), `bytes` as \
base64, a oneof as its one set field. Responses write every field, also at its default \
value. Unknown fields are refused. An empty body is read as `{}`.\n\nErrors are \
`{\"error\": code, \"message\": text}`: 400 (`bad_json`, `invalid_argument`, \
`failed_precondition`, `out_of_range`), 401 (`unauthenticated`), 404 (`unknown_method`, `not_found`), \
405 (`method_not_allowed`, with `Allow: POST`), 413 (`payload_too_large`, over 4 MiB), \
415 (`unsupported_media_type`), 429 (`resource_exhausted`), 503 (`unavailable`: retry \
later), 500 (anything else). The guide is docs/http-api.md.\n\nGenerated from \
proto/wsgate/v1/gateway.proto by tests/e2e/openapi.rs: do not edit by hand.";

/// A document node that keeps its keys in order (the order the document is read in).
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<Node>),
    Map(Vec<(String, Node)>),
}

fn s(text: impl Into<String>) -> Node {
    Node::Str(text.into())
}

fn map<const N: usize>(pairs: [(&str, Node); N]) -> Node {
    Node::Map(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn reference(kind: &str, name: &str) -> Node {
    map([("$ref", s(format!("#/components/{kind}/{name}")))])
}

/// The proto file, its comments by location path, and its messages by name.
struct Proto {
    file: FileDescriptorProto,
    comments: BTreeMap<Vec<i32>, String>,
}

impl Proto {
    fn load() -> Self {
        let set = prost_types::FileDescriptorSet::decode(wsgate_proto::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes");
        let file = set
            .file
            .into_iter()
            .find(|f| f.name() == PROTO_FILE)
            .expect("gateway.proto is in the descriptor set");
        let comments = comments(file.source_code_info.as_ref());
        Self { file, comments }
    }

    fn message(&self, name: &str) -> (usize, &DescriptorProto) {
        self.file
            .message_type
            .iter()
            .enumerate()
            .find(|(_, m)| m.name() == name)
            .unwrap_or_else(|| panic!("message {name} is not in {PROTO_FILE}"))
    }

    fn comment(&self, path: &[i32]) -> Option<&str> {
        self.comments.get(path).map(String::as_str)
    }
}

/// Leading comments, reflowed: the lines of a paragraph joined, paragraphs apart.
fn comments(info: Option<&SourceCodeInfo>) -> BTreeMap<Vec<i32>, String> {
    let mut out = BTreeMap::new();
    for location in info.map(|i| i.location.as_slice()).unwrap_or_default() {
        let Some(text) = &location.leading_comments else {
            continue;
        };
        let paragraphs: Vec<String> = text
            .split("\n\n")
            .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|p| !p.is_empty())
            .collect();
        out.insert(location.path.clone(), paragraphs.join("\n\n"));
    }
    out
}

/// `SendToUser` → `send_to_user`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// `.wsgate.v1.SendResponse` → `SendResponse`; only this package's types are served.
fn local(type_name: &str) -> &str {
    type_name
        .strip_prefix(&format!(".{PACKAGE}."))
        .filter(|n| !n.contains('.'))
        .unwrap_or_else(|| panic!("{type_name}: only top-level {PACKAGE} messages are mapped"))
}

/// Server-streaming rpcs the HTTP API serves as a long poll: (rpc, the poll's request
/// schema, its response schema). Their schemas are made by [`long_poll_schema`].
const LONG_POLLS: [(&str, &str, &str); 1] = [("WatchEvents", "WatchEventsPoll", "EventBatch")];

/// What the HTTP API adds to a long-poll method's description.
const LONG_POLL_NOTE: &str = "Over HTTP this is a long poll: the answer comes as soon as \
at least one matching event follows `since_id`, or empty after `wait_ms`; send its \
`next_id` as the next `since_id` (it moves past every event the read looked at, also those \
`types` left out). Events are the JSON objects webhooks send: `type` is a lowercase \
string and `at_ms` a number, not the proto3 mapping of `Event`. A status that ends the \
stream is the poll's error: OUT_OF_RANGE is 400 `out_of_range`, UNAVAILABLE 503. Keep \
`wait_ms` below the idle timeout of any proxy on the way (30000 is a safe choice).";

/// The methods of the service: (rpc name, request, response, comment). A
/// server-streaming rpc is listed with its long poll's schemas.
fn methods(proto: &Proto) -> Vec<(String, String, String, String)> {
    let (index, service) = proto
        .file
        .service
        .iter()
        .enumerate()
        .find(|(_, s)| s.name() == SERVICE)
        .expect("the Gateway service");
    service
        .method
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let comment = proto
                .comment(&[6, index as i32, 2, i as i32])
                .unwrap_or_else(|| panic!("rpc {} has no comment to document it", m.name()));
            if !m.client_streaming() && !m.server_streaming() {
                return (
                    m.name().to_owned(),
                    local(m.input_type()).to_owned(),
                    local(m.output_type()).to_owned(),
                    comment.to_owned(),
                );
            }
            let (_, request, response) = LONG_POLLS
                .iter()
                .find(|(rpc, ..)| *rpc == m.name() && !m.client_streaming())
                .unwrap_or_else(|| {
                    panic!(
                        "rpc {} streams: the HTTP API serves it as a long poll with request \
                         and response schemas of its own; map them in LONG_POLLS, then \
                         regenerate",
                        m.name()
                    )
                });
            (
                m.name().to_owned(),
                (*request).to_owned(),
                (*response).to_owned(),
                format!("{comment}\n\n{LONG_POLL_NOTE}"),
            )
        })
        .collect()
}

/// The schema of one message; the messages its fields refer to go to `more`.
fn schema(proto: &Proto, name: &str, more: &mut Vec<String>) -> Node {
    let (index, message) = proto.message(name);
    assert!(
        message.nested_type.is_empty() && message.enum_type.is_empty(),
        "{name}: nested types (maps, enums) are not mapped yet"
    );
    let mut properties = Vec::new();
    for (i, field) in message.field.iter().enumerate() {
        let mut schema = match field.r#type() {
            Type::String => vec![("type", s("string"))],
            Type::Bool => vec![("type", s("boolean"))],
            Type::Uint32 | Type::Fixed32 => vec![
                ("type", s("integer")),
                ("format", s("uint32")),
                ("minimum", Node::Int(0)),
                ("maximum", Node::Int(u32::MAX.into())),
            ],
            Type::Int32 | Type::Sint32 | Type::Sfixed32 => {
                vec![("type", s("integer")), ("format", s("int32"))]
            }
            Type::Uint64 | Type::Fixed64 => vec![
                ("type", s("string")),
                ("format", s("uint64")),
                ("pattern", s("^[0-9]+$")),
            ],
            Type::Int64 | Type::Sint64 | Type::Sfixed64 => vec![
                ("type", s("string")),
                ("format", s("int64")),
                ("pattern", s("^-?[0-9]+$")),
            ],
            Type::Double | Type::Float => vec![("type", s("number"))],
            Type::Bytes => vec![("type", s("string")), ("format", s("byte"))],
            Type::Message => {
                let target = local(field.type_name()).to_owned();
                let to = s(format!("#/components/schemas/{target}"));
                more.push(target);
                vec![("$ref", to)]
            }
            other => panic!("{name}.{}: {other:?} is not mapped yet", field.name()),
        };
        let mut description = proto
            .comment(&[4, index as i32, 2, i as i32])
            .unwrap_or("")
            .to_owned();
        if let Some(oneof) = field.oneof_index.filter(|_| !field.proto3_optional()) {
            let oneof = &message.oneof_decl[oneof as usize];
            let members: Vec<&str> = message
                .field
                .iter()
                .filter(|f| f.oneof_index == field.oneof_index)
                .map(|f| f.name())
                .collect();
            if !description.is_empty() {
                description.push_str("\n\n");
            }
            description.push_str(&format!(
                "One of `{}`: set at most one of {}.",
                oneof.name(),
                members.join(", ")
            ));
        }
        if field.label() == Label::Repeated {
            schema = vec![("type", s("array")), ("items", to_map(schema))];
        }
        if !description.is_empty() {
            schema.push(("description", s(description)));
        }
        properties.push((field.name().to_owned(), to_map(schema)));
    }
    let mut out = vec![("type", s("object"))];
    if let Some(doc) = proto.comment(&[4, index as i32]) {
        out.push(("description", s(doc)));
    }
    out.push(("additionalProperties", Node::Bool(false)));
    out.push(("properties", Node::Map(properties)));
    to_map(out)
}

/// The schemas of the long poll of `WatchEvents`, made from the proto's
/// `WatchEventsRequest` and `Event` (their fields' comments, the event types) and the
/// server's limits; `None` for any other name.
fn long_poll_schema(proto: &Proto, name: &str, more: &mut Vec<String>) -> Option<Node> {
    let field_comment = |message: &str, field: &str| -> String {
        let (index, m) = proto.message(message);
        let i = m
            .field
            .iter()
            .position(|f| f.name() == field)
            .unwrap_or_else(|| panic!("{message}.{field} is not in the proto"));
        proto
            .comment(&[4, index as i32, 2, i as i32])
            .unwrap_or("")
            .to_owned()
    };
    let object = |description: &str, required: Vec<Node>, properties: Vec<(String, Node)>| {
        let mut out = vec![("type", s("object")), ("description", s(description))];
        if !required.is_empty() {
            out.push(("required", Node::List(required)));
        }
        out.push(("additionalProperties", Node::Bool(false)));
        out.push(("properties", Node::Map(properties)));
        to_map(out)
    };
    let max_wait = wsgate_server::events::MAX_WAIT.as_millis() as i64;
    let max_read = wsgate_server::events::MAX_READ as i64;
    let default_limit = wsgate_server::grpc::http_api::watch::DEFAULT_LIMIT as i64;
    match name {
        "WatchEventsPoll" => Some(object(
            "A long poll of the session events.",
            vec![],
            vec![
                (
                    "since_id".to_owned(),
                    map([
                        ("type", s("string")),
                        (
                            "description",
                            s(field_comment("WatchEventsRequest", "since_id")),
                        ),
                    ]),
                ),
                (
                    "types".to_owned(),
                    map([
                        ("type", s("array")),
                        ("items", event_type_schema(proto)),
                        (
                            "description",
                            s("Only events of these types; empty = every type."),
                        ),
                    ]),
                ),
                (
                    "wait_ms".to_owned(),
                    map([
                        ("type", s("integer")),
                        ("minimum", Node::Int(0)),
                        ("maximum", Node::Int(max_wait)),
                        ("default", Node::Int(0)),
                        (
                            "description",
                            s("How long to wait for a first matching event, in \
                               milliseconds; 0 answers at once."),
                        ),
                    ]),
                ),
                (
                    "limit".to_owned(),
                    map([
                        ("type", s("integer")),
                        ("minimum", Node::Int(1)),
                        ("maximum", Node::Int(max_read)),
                        ("default", Node::Int(default_limit)),
                        ("description", s("Most events in the answer.")),
                    ]),
                ),
            ],
        )),
        "EventBatch" => {
            more.push("SessionEvent".to_owned());
            Some(object(
                "The events of one poll, oldest first, and where the next poll starts.",
                vec![s("events"), s("next_id")],
                vec![
                    (
                        "events".to_owned(),
                        map([
                            ("type", s("array")),
                            ("items", reference("schemas", "SessionEvent")),
                        ]),
                    ),
                    (
                        "next_id".to_owned(),
                        map([
                            ("type", s("string")),
                            (
                                "description",
                                s("The `since_id` of the next poll: past every event this \
                                   read looked at, also when it answered none."),
                            ),
                        ]),
                    ),
                ],
            ))
        }
        "SessionEvent" => {
            let (index, event) = proto.message("Event");
            let mut required = Vec::new();
            let mut properties = Vec::new();
            for field in &event.field {
                let mut schema = match field.r#type() {
                    Type::String => vec![("type", s("string"))],
                    Type::Uint32 | Type::Uint64 => {
                        vec![("type", s("integer")), ("minimum", Node::Int(0))]
                    }
                    Type::Enum => event_type_pairs(proto),
                    other => panic!("Event.{}: {other:?} is not mapped yet", field.name()),
                };
                let comment = field_comment("Event", field.name());
                if !comment.is_empty() {
                    schema.push(("description", s(comment)));
                }
                if !field.proto3_optional() {
                    required.push(s(field.name()));
                }
                properties.push((field.name().to_owned(), to_map(schema)));
            }
            let description = proto
                .comment(&[4, index as i32])
                .unwrap_or("A session event.");
            Some(object(description, required, properties))
        }
        _ => None,
    }
}

/// The event types as JSON has them: the proto's `EventType` values, lowercase, without
/// their prefix and without `EVENT_TYPE_UNSPECIFIED`.
fn event_type_schema(proto: &Proto) -> Node {
    to_map(event_type_pairs(proto))
}

fn event_type_pairs(proto: &Proto) -> Vec<(&'static str, Node)> {
    let kinds = proto
        .file
        .enum_type
        .iter()
        .find(|e| e.name() == "EventType")
        .expect("enum EventType")
        .value
        .iter()
        .filter(|v| v.number() != 0)
        .map(|v| {
            s(v.name()
                .strip_prefix("EVENT_TYPE_")
                .expect("EventType values start with EVENT_TYPE_")
                .to_ascii_lowercase())
        })
        .collect();
    vec![("type", s("string")), ("enum", Node::List(kinds))]
}

fn to_map(pairs: Vec<(&str, Node)>) -> Node {
    Node::Map(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn error_response(description: &str) -> Node {
    map([
        ("description", s(description)),
        (
            "content",
            map([(
                "application/json",
                map([("schema", reference("schemas", "Error"))]),
            )]),
        ),
    ])
}

/// The whole document.
fn document(proto: &Proto) -> Node {
    let mut paths = Vec::new();
    let mut wanted = Vec::new();
    for (rpc, request, response, comment) in methods(proto) {
        let name = snake(&rpc);
        let operation = map([
            ("operationId", s(&name)),
            ("summary", s(comment.split(". ").next().unwrap_or(&comment))),
            (
                "description",
                s(format!("{comment}\n\ngRPC: `{PACKAGE}.{SERVICE}/{rpc}`.")),
            ),
            (
                "requestBody",
                map([
                    ("required", Node::Bool(false)),
                    (
                        "content",
                        map([(
                            "application/json",
                            map([("schema", reference("schemas", &request))]),
                        )]),
                    ),
                ]),
            ),
            (
                "responses",
                map([
                    (
                        "200",
                        map([
                            ("description", s(format!("The `{response}`."))),
                            (
                                "content",
                                map([(
                                    "application/json",
                                    map([("schema", reference("schemas", &response))]),
                                )]),
                            ),
                        ]),
                    ),
                    ("400", reference("responses", "BadRequest")),
                    ("401", reference("responses", "Unauthenticated")),
                    ("413", reference("responses", "PayloadTooLarge")),
                    ("415", reference("responses", "UnsupportedMediaType")),
                    ("503", reference("responses", "Unavailable")),
                    ("default", reference("responses", "Error")),
                ]),
            ),
        ]);
        paths.push((format!("/api/v1/{name}"), map([("post", operation)])));
        wanted.push(request);
        wanted.push(response);
    }
    let mut schemas = Vec::new();
    let mut done = BTreeSet::new();
    while !wanted.is_empty() {
        let name = wanted.remove(0);
        if done.insert(name.clone()) {
            let mut more = Vec::new();
            let node = long_poll_schema(proto, &name, &mut more)
                .unwrap_or_else(|| schema(proto, &name, &mut more));
            schemas.push((name.clone(), node));
            wanted.extend(more);
        }
    }
    schemas.sort_by(|a, b| a.0.cmp(&b.0));
    schemas.push((
        "Error".to_owned(),
        map([
            ("type", s("object")),
            ("required", Node::List(vec![s("error"), s("message")])),
            (
                "properties",
                map([
                    (
                        "error",
                        map([
                            ("type", s("string")),
                            (
                                "description",
                                s("A stable machine-readable code: `bad_json`, \
                                   `unknown_method`, `method_not_allowed`, \
                                   `unsupported_media_type`, `payload_too_large`, or the \
                                   gRPC status code in lowercase (`invalid_argument`, \
                                   `unavailable`, …)."),
                            ),
                        ]),
                    ),
                    (
                        "message",
                        map([
                            ("type", s("string")),
                            ("description", s("What went wrong, for a person.")),
                        ]),
                    ),
                ]),
            ),
        ]),
    ));
    map([
        ("openapi", s("3.1.0")),
        (
            "info",
            map([
                ("title", s("wsgate HTTP API")),
                ("version", s("v1")),
                ("description", s(INTRO)),
            ]),
        ),
        (
            "servers",
            Node::List(vec![map([
                ("url", s("http://127.0.0.1:50051")),
                ("description", s("the default control listener")),
            ])]),
        ),
        (
            "security",
            Node::List(vec![map([("apiKey", Node::List(vec![]))])]),
        ),
        ("paths", Node::Map(paths)),
        (
            "components",
            map([
                (
                    "securitySchemes",
                    map([(
                        "apiKey",
                        map([
                            ("type", s("http")),
                            ("scheme", s("bearer")),
                            (
                                "description",
                                s("One of `control.api_keys`. Without configured keys \
                                   (allowed only on loopback) no key is needed."),
                            ),
                        ]),
                    )]),
                ),
                (
                    "responses",
                    map([
                        (
                            "BadRequest",
                            error_response(
                                "`bad_json` (not the request in proto3 JSON), \
                             `invalid_argument`, `failed_precondition` or `out_of_range`",
                            ),
                        ),
                        (
                            "Unauthenticated",
                            error_response(
                                "`unauthenticated`: no API key, or not a configured one",
                            ),
                        ),
                        (
                            "PayloadTooLarge",
                            error_response("`payload_too_large`: the body is over 4 MiB"),
                        ),
                        (
                            "UnsupportedMediaType",
                            error_response(
                                "`unsupported_media_type`: the body is not sent as \
                             `application/json`",
                            ),
                        ),
                        (
                            "Unavailable",
                            error_response(
                                "`unavailable`: a backend (Redis) cannot be reached; retry later",
                            ),
                        ),
                        (
                            "Error",
                            error_response(
                                "any other error: 404 `not_found`, 429 `resource_exhausted`, \
                             500",
                            ),
                        ),
                    ]),
                ),
                ("schemas", Node::Map(schemas)),
            ]),
        ),
    ])
}

/// The document as YAML: block style; long text folded (`>-`) and wrapped, other
/// strings double-quoted (JSON escapes are YAML escapes); keys plain where YAML reads
/// them back as the same string. The test reads the output back to prove all that.
fn yaml(node: &Node) -> String {
    let mut out = String::new();
    emit(node, 0, &mut out);
    out
}

/// Widest line of folded text.
const WIDTH: usize = 92;

/// `node` written after `key: ` or `- ` at `indent`, when it is a scalar.
fn scalar(node: &Node, indent: usize) -> Option<String> {
    match node {
        Node::Str(t) if foldable(t) => Some(folded(t, indent + 2)),
        Node::Str(t) => Some(serde_json::to_string(t).expect("a string serializes")),
        Node::Int(i) => Some(i.to_string()),
        Node::Bool(b) => Some(b.to_string()),
        Node::List(l) if l.is_empty() => Some("[]".to_owned()),
        Node::Map(m) if m.is_empty() => Some("{}".to_owned()),
        _ => None,
    }
}

/// Long text whose every line folds back exactly: no control characters, no leading,
/// trailing or doubled spaces.
fn foldable(text: &str) -> bool {
    text.len() > 60
        && text.split('\n').all(|line| {
            !line.starts_with(' ')
                && !line.ends_with(' ')
                && !line.contains("  ")
                && !line.chars().any(char::is_control)
        })
}

/// A folded block: each line of the text wrapped at spaces, and one empty line for each
/// line break (a folded scalar reads a lone break as a space).
fn folded(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::from(">-\n");
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let mut current = String::new();
        for word in line.split(' ') {
            if !current.is_empty() && indent + current.len() + 1 + word.len() > WIDTH {
                out.push_str(&format!("{pad}{current}\n"));
                current.clear();
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
        if !current.is_empty() {
            out.push_str(&format!("{pad}{current}\n"));
        }
    }
    out.pop();
    out
}

fn key(k: &str) -> String {
    let plain = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || "$/".contains(c))
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "$/_.-".contains(c));
    if plain {
        k.to_owned()
    } else {
        serde_json::to_string(k).expect("a string serializes")
    }
}

fn emit(node: &Node, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match node {
        Node::Map(pairs) => {
            for (k, v) in pairs {
                match scalar(v, indent) {
                    Some(text) => out.push_str(&format!("{pad}{}: {text}\n", key(k))),
                    None => {
                        out.push_str(&format!("{pad}{}:\n", key(k)));
                        emit(v, indent + 2, out);
                    }
                }
            }
        }
        Node::List(items) => {
            for item in items {
                match scalar(item, indent) {
                    Some(text) => out.push_str(&format!("{pad}- {text}\n")),
                    None => {
                        // The item's first line goes after the dash.
                        let mut inner = String::new();
                        emit(item, indent + 2, &mut inner);
                        out.push_str(&format!("{pad}- {}", &inner[indent + 2..]));
                    }
                }
            }
        }
        scalar_node => {
            let text = scalar(scalar_node, indent).expect("a scalar");
            out.push_str(&format!("{pad}{text}\n"));
        }
    }
}

/// What a YAML parser reads back, as a node (to check the emitter).
fn from_yaml(y: &Yaml) -> Node {
    match y {
        Yaml::String(t) => s(t.clone()),
        Yaml::Integer(i) => Node::Int(*i),
        Yaml::Boolean(b) => Node::Bool(*b),
        Yaml::Array(items) => Node::List(items.iter().map(from_yaml).collect()),
        Yaml::Hash(h) => Node::Map(
            h.iter()
                .map(|(k, v)| {
                    let Yaml::String(k) = k else {
                        panic!("a key read back as {k:?}")
                    };
                    (k.clone(), from_yaml(v))
                })
                .collect(),
        ),
        other => panic!("unexpected YAML node {other:?}"),
    }
}

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml")
}

#[test]
fn the_openapi_document_is_generated_from_the_proto() {
    let proto = Proto::load();
    let doc = document(&proto);
    let text = yaml(&doc);
    let parsed = YamlLoader::load_from_str(&text).expect("the document is YAML");
    assert_eq!(parsed.len(), 1);
    assert_eq!(
        from_yaml(&parsed[0]),
        doc,
        "YAML reads back as the document"
    );

    let current = std::fs::read_to_string(path()).unwrap_or_default();
    if current != text {
        if std::env::var_os("CI").is_none() {
            std::fs::write(path(), &text).expect("docs/openapi.yaml is writable");
        }
        panic!(
            "docs/openapi.yaml is not what proto/wsgate/v1/gateway.proto gives{}: review \
             the change with `git diff docs/openapi.yaml` and commit it",
            if std::env::var_os("CI").is_none() {
                " (rewritten now)"
            } else {
                ""
            }
        );
    }
}

#[test]
fn the_server_serves_exactly_the_proto_methods_over_http() {
    let proto = Proto::load();
    let want: BTreeSet<(String, String)> = methods(&proto)
        .into_iter()
        .map(|(rpc, ..)| (snake(&rpc), rpc))
        .collect();
    let served: BTreeSet<(String, String)> = wsgate_server::grpc::http_api::methods::METHODS
        .iter()
        .map(|m| (m.name.to_owned(), m.rpc.to_owned()))
        .collect();
    assert_eq!(
        served, want,
        "HTTP methods (left) against the proto's rpcs (right)"
    );
}
