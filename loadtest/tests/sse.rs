//! SSE parsing and LLM token accounting for OpenAI, Anthropic and Gemini streams,
//! including streams cut mid-way and chunks split at arbitrary bytes.

use std::time::Duration;

use proptest::prelude::*;
use tollgate_loadtest::sse::{SseEvent, SseFormat, SseParser, StreamTracker};

const OPENAI: &str = concat!(
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" wörld\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13}}\n\n",
    "data: [DONE]\n\n",
);

const ANTHROPIC: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\ndata: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

const GEMINI: &str = concat!(
    "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}],\"role\":\"model\"},\"index\":0}]}\r\n\r\n",
    "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\" there\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":2,\"totalTokenCount\":5}}\r\n\r\n",
);

fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, &mut out);
    }
    out
}

/// Feeds `body` one byte at a time, each byte 10ms after the previous one.
fn track_bytewise(format: SseFormat, body: &[u8]) -> tollgate_loadtest::sse::StreamSummary {
    let mut t = StreamTracker::new(format);
    for (i, b) in body.iter().enumerate() {
        t.feed(std::slice::from_ref(b), Duration::from_millis(10 * i as u64));
    }
    t.finish()
}

#[test]
fn parser_handles_fields_comments_multiline_data_and_line_endings() {
    let events =
        parse_all(&[b": comment\r\nevent: a\r\ndata: one\r\ndata:two\r\n\r\n", b"data: x\rdata: y\r\r", b"id: 7\n\n"]);
    assert_eq!(
        events,
        vec![
            SseEvent { event: "a".into(), data: "one\ntwo".into() },
            SseEvent { event: String::new(), data: "x\ny".into() },
        ]
    );
}

#[test]
fn parser_reports_a_partial_event_when_cut() {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    p.feed(b"data: {\"a\":1}\n\ndata: {\"b\"", &mut out);
    assert_eq!(out.len(), 1);
    assert!(p.has_partial());
}

#[test]
fn openai_stream_yields_ttft_itl_and_usage_tokens() {
    let mut t = StreamTracker::new(SseFormat::Openai);
    let events: Vec<&str> = OPENAI.split_inclusive("\n\n").collect();
    for (i, e) in events.iter().enumerate() {
        t.feed(e.as_bytes(), Duration::from_millis(100 + 20 * i as u64));
    }
    let s = t.finish();
    assert!(s.complete);
    assert_eq!(s.deltas, 3, "the empty role chunk is not a token");
    assert_eq!(s.ttft, Some(Duration::from_millis(120)));
    assert_eq!(s.inter_token, vec![Duration::from_millis(20); 2]);
    assert_eq!(s.output_tokens, 4, "usage figure wins over the delta count");
    assert_eq!(s.input_tokens, 9);
    assert!((s.decode_tokens_per_second().unwrap() - 75.0).abs() < 1e-9);
}

#[test]
fn anthropic_stream_yields_tokens_and_usage() {
    let s = track_bytewise(SseFormat::Anthropic, ANTHROPIC.as_bytes());
    assert!(s.complete);
    assert_eq!(s.deltas, 2);
    assert_eq!(s.output_tokens, 15);
    assert_eq!(s.input_tokens, 25);
    assert!(s.ttft.is_some());
    assert_eq!(s.inter_token.len(), 1);
}

#[test]
fn gemini_stream_with_crlf_framing() {
    let s = track_bytewise(SseFormat::Gemini, GEMINI.as_bytes());
    assert!(s.complete);
    assert_eq!((s.deltas, s.output_tokens, s.input_tokens), (2, 2, 3));
}

#[test]
fn openai_stream_cut_mid_way_is_incomplete_but_keeps_its_tokens() {
    let cut = OPENAI.find("lo\\\"").unwrap_or(OPENAI.len() / 2);
    let s = track_bytewise(SseFormat::Openai, &OPENAI.as_bytes()[..cut]);
    assert!(!s.complete);
    assert_eq!(s.deltas, 1, "only the first full token event counts");
    assert_eq!(s.output_tokens, 1, "no usage chunk: fall back to counted deltas");
    assert!(s.ttft.is_some());
}

#[test]
fn anthropic_stream_cut_mid_way_is_incomplete() {
    let cut = ANTHROPIC.find("event: content_block_stop").unwrap() + 10;
    let s = track_bytewise(SseFormat::Anthropic, &ANTHROPIC.as_bytes()[..cut]);
    assert!(!s.complete);
    assert_eq!(s.deltas, 2);
    assert_eq!(s.output_tokens, 2);
}

#[test]
fn error_events_are_reported() {
    let mut t = StreamTracker::new(SseFormat::Anthropic);
    t.feed(
        b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"x\"}}\n\n",
        Duration::ZERO,
    );
    assert_eq!(t.finish().error.as_deref(), Some("overloaded_error"));
    let mut t = StreamTracker::new(SseFormat::Openai);
    t.feed(b"data: {\"error\":{\"type\":\"server_error\"}}\n\n", Duration::ZERO);
    assert_eq!(t.finish().error.as_deref(), Some("server_error"));
}

proptest! {
    #[test]
    fn chunk_boundaries_do_not_change_the_events(cuts in proptest::collection::vec(0usize..2000, 0..12), fmt in 0usize..3) {
        let body = [OPENAI, ANTHROPIC, GEMINI][fmt].as_bytes();
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (body.len() + 1)).collect();
        points.push(0);
        points.push(body.len());
        points.sort_unstable();
        let chunks: Vec<&[u8]> = points.windows(2).map(|w| &body[w[0]..w[1]]).collect();
        prop_assert_eq!(parse_all(&chunks), parse_all(&[body]));
    }
}
