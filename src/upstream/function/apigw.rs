//! API Gateway HTTP API payload format 2.0, both ways: the request as the event a function
//! written for API Gateway expects, and its answer (`statusCode`, `headers`, `cookies`,
//! `body`, `isBase64Encoded`) as the response.
//! https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-integrations-lambda.html

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// What the event is built from; `headers` are the ones the function may see (the
/// gateway's forwarding headers in, hop-by-hop and credentials the plugins hide out).
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
    pub source_ip: &'a str,
    pub request_id: &'a str,
    pub consumer: Option<&'a str>,
    pub route: &'a str,
    pub host: &'a str,
    pub time_epoch_ms: i64,
}

pub fn event(r: &Request) -> Vec<u8> {
    let mut headers = Map::new();
    let mut cookies = Vec::new();
    for (name, value) in r.headers {
        let v = String::from_utf8_lossy(value.as_bytes());
        if name == http::header::COOKIE {
            cookies.extend(
                v.split(';')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(|c| Value::String(c.to_string())),
            );
            continue;
        }
        // Repeated headers are joined with commas, as API Gateway does.
        match headers.get_mut(name.as_str()) {
            Some(Value::String(s)) => {
                s.push(',');
                s.push_str(&v);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::String(v.into_owned()));
            }
        }
    }
    let mut query = Map::new();
    for (k, v) in form_pairs(r.query) {
        match query.get_mut(&k) {
            Some(Value::String(s)) => {
                s.push(',');
                s.push_str(&v);
            }
            _ => {
                query.insert(k, Value::String(v));
            }
        }
    }
    let (body, base64) = match std::str::from_utf8(r.body) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(r.body), true),
    };
    let user_agent = r
        .headers
        .get(http::header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let mut context = json!({
        "routeKey": "$default",
        "stage": "$default",
        "requestId": r.request_id,
        "domainName": r.host,
        "timeEpoch": r.time_epoch_ms,
        "http": {
            "method": r.method,
            "path": r.path,
            "protocol": "HTTP/1.1",
            "sourceIp": r.source_ip,
            "userAgent": user_agent.unwrap_or_default(),
        },
        "gatehouse": { "route": r.route },
    });
    if let Some(c) = r.consumer {
        // Where API Gateway puts what a Lambda authorizer found.
        context["authorizer"] = json!({ "lambda": { "consumer": c } });
    }
    let mut e = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": r.path,
        "rawQueryString": r.query,
        "headers": headers,
        "requestContext": context,
        "isBase64Encoded": base64,
    });
    if !cookies.is_empty() {
        e["cookies"] = Value::Array(cookies);
    }
    if !query.is_empty() {
        e["queryStringParameters"] = Value::Object(query);
    }
    if !r.body.is_empty() {
        e["body"] = Value::String(body);
    }
    serde_json::to_vec(&e).unwrap_or_default()
}

fn form_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (dec(k), dec(v))
    })
}

/// A function's answer as a response.
#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: Bytes,
}

/// Headers a function may not set: the gateway frames the response itself.
const FRAMING: [http::HeaderName; 4] = [
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::CONNECTION,
    http::header::UPGRADE,
];

/// Format 2.0: an object with `statusCode` is a structured answer; any other JSON is a 200
/// `application/json` body as it is.
pub fn response(payload: &[u8]) -> Result<Response, String> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("the function's answer is not JSON: {e}"))?;
    let Some(status) = v.get("statusCode") else {
        return Ok(Response {
            status: 200,
            headers: vec![(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"))],
            body: Bytes::copy_from_slice(payload),
        });
    };
    let status = status
        .as_u64()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| format!("statusCode {status} is not an HTTP status"))? as u16;
    let mut headers = Vec::new();
    let mut add = |name: &str, value: &Value| -> Result<(), String> {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let n = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("`{name}` is not a header name"))?;
        let v = http::HeaderValue::from_str(&text).map_err(|_| format!("header `{name}` has a value that is not allowed"))?;
        if !FRAMING.contains(&n) {
            headers.push((n, v));
        }
        Ok(())
    };
    if let Some(Value::Object(h)) = v.get("headers") {
        for (k, val) in h {
            add(k, val)?;
        }
    }
    if let Some(Value::Object(h)) = v.get("multiValueHeaders") {
        for (k, vals) in h {
            for val in vals.as_array().into_iter().flatten() {
                add(k, val)?;
            }
        }
    }
    if let Some(Value::Array(c)) = v.get("cookies") {
        for cookie in c {
            add("set-cookie", cookie)?;
        }
    }
    let text = match v.get("body") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let body = if v.get("isBase64Encoded").and_then(Value::as_bool).unwrap_or(false) {
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| format!("isBase64Encoded, and the body is not base64: {e}"))?
    } else {
        text.into_bytes()
    };
    Ok(Response {
        status,
        headers,
        body: Bytes::from(body),
    })
}

/// The error type in an error document: Lambda's JSON (`__type`, `Type`, `errorType`) or
/// the XML other AWS front ends answer with (`<Code>`).
pub fn error_type(body: &[u8]) -> Option<String> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return ["__type", "Type", "errorType", "code"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_string());
    }
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = text[start..].find("</Code>")? + start;
    Some(text[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_answers_map_status_headers_cookies_and_base64() {
        let r = response(
            br#"{"statusCode":201,"headers":{"x-a":"1","content-length":"999","x-n":5},
                 "multiValueHeaders":{"x-m":["a","b"]},"cookies":["s=1; Path=/","t=2"],
                 "body":"aGVsbG8=","isBase64Encoded":true}"#,
        )
        .unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(&r.body[..], b"hello");
        let h: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert!(h.contains(&("x-a".into(), "1".into())));
        assert!(h.contains(&("x-n".into(), "5".into())));
        assert!(h.contains(&("x-m".into(), "a".into())) && h.contains(&("x-m".into(), "b".into())));
        assert!(h.contains(&("set-cookie".into(), "s=1; Path=/".into())) && h.contains(&("set-cookie".into(), "t=2".into())));
        assert!(!h.iter().any(|(k, _)| k == "content-length"), "{h:?}");
    }

    #[test]
    fn plain_json_is_a_200_and_bad_answers_are_errors() {
        let r = response(br#"{"hello":"world"}"#).unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &br#"{"hello":"world"}"#[..]));
        assert!(response(b"not json").is_err());
        assert!(response(br#"{"statusCode":99}"#).is_err());
        assert!(response(br#"{"statusCode":200,"headers":{"x":"a\r\nInjected: 1"}}"#).is_err());
        assert!(response(br#"{"statusCode":200,"body":"!!","isBase64Encoded":true}"#).is_err());
    }

    #[test]
    fn error_types_from_json_and_xml() {
        assert_eq!(
            error_type(br#"{"__type":"com.amazon#ResourceNotFoundException"}"#).as_deref(),
            Some("ResourceNotFoundException")
        );
        assert_eq!(
            error_type(br#"{"errorType":"ValueError","errorMessage":"x"}"#).as_deref(),
            Some("ValueError")
        );
        assert_eq!(
            error_type(b"<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code></Error></ErrorResponse>").as_deref(),
            Some("SignatureDoesNotMatch")
        );
    }

    #[test]
    fn events_carry_the_request() {
        let mut h = http::HeaderMap::new();
        h.append("x-a", http::HeaderValue::from_static("1"));
        h.append("x-a", http::HeaderValue::from_static("2"));
        h.append("cookie", http::HeaderValue::from_static("a=1; b=2"));
        let e: Value = serde_json::from_slice(&event(&Request {
            method: "POST",
            path: "/fn/x",
            query: "k=v+w&k=2",
            headers: &h,
            body: &[0xff, 0x00],
            source_ip: "192.0.2.1",
            request_id: "rid",
            consumer: Some("ann"),
            route: "fn",
            host: "api.test",
            time_epoch_ms: 1,
        }))
        .unwrap();
        assert_eq!(e["headers"]["x-a"], "1,2");
        assert_eq!(e["cookies"], json!(["a=1", "b=2"]));
        assert_eq!(e["queryStringParameters"]["k"], "v w,2");
        assert_eq!(e["isBase64Encoded"], true);
        assert_eq!(e["body"], "/wA=");
        assert_eq!(e["requestContext"]["http"]["method"], "POST");
        assert_eq!(e["requestContext"]["authorizer"]["lambda"]["consumer"], "ann");
    }
}
