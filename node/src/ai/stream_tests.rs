//! Billing of a stream that did not complete (`stream::billed_usage`), fed by
//! the real Gemini decoder from `tollgate-llm`; the mid-stream idle timer.

use tollgate_llm::provider::{ProviderKind, adapter};
use tollgate_llm::types::Usage;

use super::stream::{IdleTimer, billed_usage};

#[test]
fn cut_thinking_stream_bills_the_running_thought_tokens() {
    // Thinking tokens never appear as visible text; the running usageMetadata counts them.
    // The stream is cut before Gemini's last event (the one with `finishReason`).
    let transcript = concat!(
        r#"data: {"candidates":[{"content":{"parts":[{"text":"Thinking hard","thought":true}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":9,"thoughtsTokenCount":3000,"totalTokenCount":3009}}"#,
        "\r\n\r\n",
        r#"data: {"candidates":[{"content":{"parts":[{"text":"The answer"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":2,"thoughtsTokenCount":3000,"totalTokenCount":3011}}"#,
        "\r\n\r\n",
    );
    let mut decoder = adapter(ProviderKind::Gemini).stream_decoder();
    decoder.feed(transcript.as_bytes()).expect("feed");
    assert!(decoder.finish().is_err(), "a cut stream is reported");
    assert_eq!(decoder.output_text(), "The answer");
    let (billed, estimated) = billed_usage(decoder.usage(), decoder.usage_is_final(), || 1234, decoder.output_text());
    assert!(estimated, "a cut stream's usage is an estimate");
    assert_eq!(billed.prompt_tokens, 9, "the provider's input count");
    assert!(billed.completion_tokens >= 3000, "thinking tokens are billed: {billed:?}");

    // Anthropic-style placeholder (1) loses to the tokenizer's count of what was delivered.
    let placeholder = Some(Usage::new(9, 1, None));
    let text = "Hello! How can I assist you today?";
    let (billed, estimated) = billed_usage(placeholder, false, || 0, text);
    assert_eq!((billed.completion_tokens, estimated), (9, true));
    // No usage at all: the prompt estimate and the tokenizer's count.
    let (billed, _) = billed_usage(None, false, || 77, text);
    assert_eq!((billed.prompt_tokens, billed.completion_tokens), (77, 9));
    // Final counts are billed as they are.
    let (billed, estimated) = billed_usage(Some(Usage::new(9, 3005, None)), true, || 0, "");
    assert_eq!((billed.completion_tokens, estimated), (3005, false));
}

/// Polls the timer once, as `AiStream::poll_frame` does when the provider has nothing.
fn timed_out(timer: &mut IdleTimer) -> bool {
    let waker = std::task::Waker::noop();
    timer.timed_out(&mut std::task::Context::from_waker(waker))
}

#[tokio::test(start_paused = true)]
async fn the_idle_timer_fires_only_after_a_whole_silence() {
    use std::time::Duration;
    let limit = Duration::from_secs(10);
    let mut timer = IdleTimer::new(limit);
    // Events every 6 s for a minute: the stream is never idle for 10 s.
    for _ in 0..10 {
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!timed_out(&mut timer), "a stream that keeps talking is not idle");
        timer.heard();
    }
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(!timed_out(&mut timer), "9 s of silence is under the limit");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(timed_out(&mut timer), "10 s of silence is the limit");
}
