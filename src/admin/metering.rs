//! `GET /analytics`, `GET /analytics/consumers/NAME` and the usage and invoice preview
//! `GET /usage/NAME?period=month` (JSON, or CSV with `Accept: text/csv`).

use super::{json_reply, reply};
use crate::metering::{analytics, ledger};
use crate::snapshot::Snapshot;
use http::{Response, StatusCode};
use rust_decimal::Decimal;
use serde_json::json;
use std::str::FromStr;

pub fn query<'a>(req: &'a pingora_http::RequestHeader, name: &str) -> Option<&'a str> {
    req.uri
        .query()?
        .split('&')
        .find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

fn bad(message: String) -> Response<Vec<u8>> {
    json_reply(StatusCode::BAD_REQUEST, json!({"error": message, "status": 400}))
}

fn off() -> Response<Vec<u8>> {
    json_reply(
        StatusCode::NOT_FOUND,
        json!({"error": "metering is off: analytics and the usage preview need a [metering] section", "status": 404}),
    )
}

/// `window=1h` (default) up to 24h, in whole minutes.
fn window(req: &pingora_http::RequestHeader, default: &str) -> Result<u64, String> {
    let text = query(req, "window").unwrap_or(default);
    let d = humantime::parse_duration(text).map_err(|e| format!("window `{text}`: {e}"))?;
    let minutes = d.as_secs().div_ceil(60);
    if minutes == 0 || minutes > analytics::MINUTES {
        return Err(format!("window `{text}` must be between 1m and 24h"));
    }
    Ok(minutes)
}

pub fn overview(req: &pingora_http::RequestHeader) -> Response<Vec<u8>> {
    if !crate::metering::enabled() {
        return off();
    }
    let minutes = match window(req, "1h") {
        Ok(m) => m,
        Err(e) => return bad(e),
    };
    let top = match query(req, "top").map(str::parse::<usize>) {
        None => 10,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return bad("top must be a number between 1 and 1000".into()),
    };
    json_reply(StatusCode::OK, analytics::overview(minutes, top))
}

/// A consumer name from the path, percent-decoded (names may hold spaces or UTF-8).
fn name(raw: &str) -> Option<String> {
    percent_encoding::percent_decode_str(raw).decode_utf8().ok().map(|c| c.into_owned())
}

pub async fn consumer(req: &pingora_http::RequestHeader, raw: &str, snap: &Snapshot) -> Response<Vec<u8>> {
    if !crate::metering::enabled() {
        return off();
    }
    let Some(name) = name(raw) else {
        return bad("the consumer name is not UTF-8".into());
    };
    let name = name.as_str();
    let minutes = match window(req, "24h") {
        Ok(m) => m,
        Err(e) => return bad(e),
    };
    let mut v = analytics::consumer(name, minutes);
    if let Some(url) = snap.file.store.as_ref().and_then(|s| s.redis.as_deref()) {
        v["fleet_today"] = match crate::metering::fleet::today(url, name).await {
            Ok(t) => t,
            Err(e) => json!({"error": e}),
        };
    }
    json_reply(StatusCode::OK, v)
}

/// The preview: this month's (or `period=YYYY-MM`'s) requests per route and, with a plan
/// price, the amount in exact decimal arithmetic.
pub fn usage(req: &pingora_http::RequestHeader, raw: &str, snap: &Snapshot) -> Response<Vec<u8>> {
    let Some(spool) = crate::metering::spool_dir() else { return off() };
    let Some(consumer) = name(raw) else {
        return bad("the consumer name is not UTF-8".into());
    };
    let consumer = consumer.as_str();
    let period = query(req, "period").unwrap_or("month");
    let month = match period {
        "month" => chrono::Utc::now().format("%Y-%m").to_string(),
        p if p.len() == 7 && chrono::NaiveDate::parse_from_str(&format!("{p}-01"), "%Y-%m-%d").is_ok() => p.to_string(),
        p => return bad(format!("period `{p}` must be `month` or YYYY-MM")),
    };
    let routes = ledger::usage(&spool, &month, consumer);
    let plan = snap.consumers.by_name(consumer).and_then(|c| c.plan.clone());
    let price = plan
        .as_ref()
        .and_then(|p| snap.file.plans.get(p))
        .and_then(|p| p.price.clone())
        .and_then(|p| Decimal::from_str(&p.per_request).ok().map(|d| (d, p)));
    let (requests, billable) = routes.values().fold((0, 0), |(r, b), u| (r + u.requests, b + u.billable));
    // In the price's scale, zero included (`0.0000`, not `0`): amounts line up in a column.
    let amount = |n: u64| {
        price.as_ref().map(|(unit, _)| match unit.checked_mul(Decimal::from(n)) {
            Some(mut a) => {
                a.rescale(unit.scale().max(a.scale()));
                a.to_string()
            }
            None => "overflow".to_string(),
        })
    };
    let csv = req
        .headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"));
    if csv {
        let mut out = String::from("route,requests,billable,unit_price,amount,currency\n");
        for (route, u) in &routes {
            let (unit, currency) = price.as_ref().map(|(d, p)| (d.to_string(), p.currency.clone())).unwrap_or_default();
            out.push_str(&format!(
                "{},{},{},{unit},{},{currency}\n",
                csv_field(route),
                u.requests,
                u.billable,
                amount(u.billable).unwrap_or_default()
            ));
        }
        return reply(StatusCode::OK, "text/csv; charset=utf-8", out.into_bytes());
    }
    let by_route: serde_json::Map<_, _> = routes
        .iter()
        .map(|(r, u)| {
            (
                r.clone(),
                json!({"requests": u.requests, "billable": u.billable, "amount": amount(u.billable)}),
            )
        })
        .collect();
    json_reply(
        StatusCode::OK,
        json!({
            "consumer": consumer,
            "period": month,
            "plan": plan,
            "routes": by_route,
            "requests": requests,
            "billable": billable,
            "price": price.as_ref().map(|(_, p)| json!({"per_request": p.per_request, "currency": p.currency})),
            "amount": amount(billable),
            "note": "a preview from this gateway's spool; the billing system is the source of truth",
        }),
    )
}

/// Route names are free text: quoted when they hold a separator or a quote, and never
/// read as a formula by a spreadsheet (a leading `=`, `+`, `-` or `@` gets a `'`).
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}
