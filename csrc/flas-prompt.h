// Prompts as the flow was trained on them (FLAS_SPEC.md 5), built as tokens: the chat template
// with its generation prompt, or the alpaca format (with a multi-turn form of ours,
// docs/PROMPTS.md).
//
// The template's own markers are control tokens; the messages' text is tokenized as text unless
// the caller asks for control tokens in it (content_special). A message whose text is
// "<end_of_turn>\n<start_of_turn>model" would otherwise forge turns under an application's
// system message. With text that holds no control-token text, the tokens are exactly those of
// llama.cpp's tokenizer on the whole templated string with parse_special.
//
// A prompt that cannot fit `limit` tokens is refused as early as that can be told: first from
// its bytes alone (no token covers more bytes than the vocabulary's longest piece), then while
// tokenizing. llama.cpp's tokenizer costs more than linear time on some text (many control
// tokens in one string, long runs of byte-fallback characters), so the bound is what keeps an
// oversized request cheap.
#pragma once

#include "llama.h"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

// A prompt that does not fit one sequence (FLAS_ERR_CONTEXT_LENGTH at the C API).
struct flas_context_length : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// llama_tokenize's tokens of text (add_special: BOS first; parse_special: control-token text
// becomes control tokens), unbounded: the host's vocabulary calls and the concepts' tokens.
inline std::vector<llama_token> flas_tokenize(const llama_vocab * vocab, const std::string & text, bool add_special,
                                              bool parse_special) {
    const int n = -llama_tokenize(vocab, text.data(), (int32_t) text.size(), nullptr, 0, add_special, parse_special);
    std::vector<llama_token> out(n > 0 ? n : 0);
    if (n > 0) {
        llama_tokenize(vocab, text.data(), (int32_t) text.size(), out.data(), n, add_special, parse_special);
    }
    return out;
}

struct flas_turn {
    std::string role;     // "system", "user", "assistant"
    std::string content;
};

class flas_prompt {
  public:
    // model: borrowed, must outlive this; alpaca: the flow's prompt format is alpaca (else the
    // model's chat template); a prompt of limit tokens or more is refused, limit_why saying where
    // the limit comes from ("n_ctx 4096 / n_seq 1"). Reads the vocabulary's control tokens once.
    flas_prompt(const llama_model * model, bool alpaca, int64_t limit, std::string limit_why);

    // The conversation's tokens, BOS first (as llama_tokenize with add_special). Throws
    // flas_context_length when it has limit tokens or more; std::invalid_argument for a
    // conversation the format cannot express.
    std::vector<llama_token> tokens(const std::vector<flas_turn> & turns, bool content_special) const;
    // Text as it is (no template), BOS first: llama_tokenize(text, add_special, parse_special)'s
    // tokens, with the same limit.
    std::vector<llama_token> text_tokens(const std::string & text, bool parse_special) const;

    // The model's chat template applied to the turns, with the generation prompt, as text.
    std::string apply_template(const std::vector<flas_turn> & turns) const;

  private:
    struct segment {
        std::string text;
        bool content;     // a message's text (else the format's markup)
    };
    struct fragment {
        llama_token token;  // a control token, or LLAMA_TOKEN_NULL for text
        std::string text;
    };

    std::vector<segment> segments(const std::vector<flas_turn> & turns) const;
    static std::vector<segment> alpaca_segments(const std::vector<flas_turn> & turns);
    std::vector<llama_token> tokens_of(const std::vector<segment> & segs, bool content_special) const;
    void split_control(const std::string & text, std::vector<fragment> & out) const;

    const llama_model * model_;
    const llama_vocab * vocab_;
    bool alpaca_;
    int64_t limit_;
    std::string limit_why_;
    std::vector<llama_token> control_;  // control tokens, longest text first (llama.cpp's order)
    size_t max_piece_ = 1;              // bytes of the longest token text: a bound on what one token covers
};
