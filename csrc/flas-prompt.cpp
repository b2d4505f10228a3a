#include "flas-prompt.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <unordered_map>

// llama.cpp's chat templates trim a message's text (leading and trailing whitespace) or keep it.
static std::string trim(const std::string & s) {
    size_t b = 0, e = s.size();
    while (b < e && isspace((unsigned char) s[b])) {
        ++b;
    }
    while (e > b && isspace((unsigned char) s[e - 1])) {
        --e;
    }
    return s.substr(b, e - b);
}

// Stands for message i while the template is applied: bytes no template writes itself, and no
// whitespace at either end, so a template that trims text leaves it whole.
static std::string sentinel(size_t i) {
    return "\x01" + std::to_string(i) + "\x02";
}

flas_prompt::flas_prompt(const llama_model * model, bool alpaca, int64_t limit, std::string limit_why)
    : model_(model), vocab_(llama_model_get_vocab(model)), alpaca_(alpaca), limit_(limit),
      limit_why_(std::move(limit_why)) {
    const int n = llama_vocab_n_tokens(vocab_);
    for (llama_token t = 0; t < n; ++t) {
        const char * text = llama_vocab_get_text(vocab_, t);
        max_piece_ = std::max(max_piece_, strlen(text));
        if (llama_vocab_get_attr(vocab_, t) &
            (LLAMA_TOKEN_ATTR_CONTROL | LLAMA_TOKEN_ATTR_USER_DEFINED | LLAMA_TOKEN_ATTR_UNKNOWN)) {
            control_.push_back(t);
        }
    }
    std::stable_sort(control_.begin(), control_.end(), [&](llama_token a, llama_token b) {
        return strlen(llama_vocab_get_text(vocab_, a)) > strlen(llama_vocab_get_text(vocab_, b));
    });
}

std::string flas_prompt::apply_template(const std::vector<flas_turn> & turns) const {
    const char * tmpl = llama_model_chat_template(model_, nullptr);
    if (tmpl == nullptr) {
        throw std::invalid_argument("the base model has no chat template; use a chat model or prompt_format alpaca");
    }
    std::vector<llama_chat_message> msgs;
    size_t bytes = 0;
    for (const flas_turn & t : turns) {
        msgs.push_back({t.role.c_str(), t.content.c_str()});
        bytes += t.role.size() + t.content.size();
    }
    std::vector<char> buf(bytes + 64 * turns.size() + 1024);
    int32_t n = llama_chat_apply_template(tmpl, msgs.data(), msgs.size(), true, buf.data(), (int32_t) buf.size());
    if (n > (int32_t) buf.size()) {
        buf.resize(n);
        n = llama_chat_apply_template(tmpl, msgs.data(), msgs.size(), true, buf.data(), (int32_t) buf.size());
    }
    if (n < 0) {
        throw std::invalid_argument("llama.cpp does not support this model's chat template");
    }
    return std::string(buf.data(), n);
}

// The alpaca format (FLAS_SPEC.md 5) for one instruction, as the flow was trained:
//     ### Instruction:\n{prompt}\n\n### Response:\n
// It has no multi-turn form of its own; this is its natural extension, which a base model
// continues well (docs/PROMPTS.md): a system message as a preamble followed by a blank line,
// each earlier exchange as an instruction block and its response followed by a blank line, and
// the last user message as the instruction to answer. One user message gives exactly the
// trained prompt.
std::vector<flas_prompt::segment> flas_prompt::alpaca_segments(const std::vector<flas_turn> & turns) {
    std::vector<segment> out;
    for (size_t i = 0; i < turns.size(); ++i) {
        const flas_turn & t = turns[i];
        const std::string where = "message " + std::to_string(i) + " (" + t.role + ")";
        if (t.role == "system") {
            if (i != 0) {
                throw std::invalid_argument(where + ": in the alpaca prompt format a system message can only come first");
            }
            out.push_back({t.content, true});
            out.push_back({"\n\n", false});
        } else if (t.role == "user") {
            if (i > 0 && turns[i - 1].role == "user") {
                throw std::invalid_argument(where + ": in the alpaca prompt format each user message is answered by "
                                            "an assistant message before the next");
            }
            out.push_back({"### Instruction:\n", false});
            out.push_back({t.content, true});
            out.push_back({"\n\n### Response:\n", false});
        } else if (t.role == "assistant") {
            if (i == 0 || turns[i - 1].role != "user") {
                throw std::invalid_argument(where + ": in the alpaca prompt format an assistant message answers the "
                                            "user message before it");
            }
            out.push_back({t.content, true});
            out.push_back({"\n\n", false});
        } else {
            throw std::invalid_argument(where + ": the alpaca prompt format knows the roles system, user and "
                                        "assistant");
        }
    }
    if (turns.empty() || turns.back().role != "user") {
        throw std::invalid_argument("in the alpaca prompt format the conversation ends with a user message (the "
                                    "instruction to answer)");
    }
    return out;
}

// The prompt as markup and message text, in order. The template is applied twice: with a
// sentinel in place of each message, which shows where the markup ends and each message sits,
// and with the messages, from which each message's text is read as the template wrote it
// (whole or trimmed).
std::vector<flas_prompt::segment> flas_prompt::segments(const std::vector<flas_turn> & turns) const {
    std::vector<segment> out;
    if (alpaca_) {
        return alpaca_segments(turns);
    }
    std::vector<flas_turn> marked = turns;
    for (size_t i = 0; i < marked.size(); ++i) {
        marked[i].content = sentinel(i);
    }
    const std::string layout = apply_template(marked);
    const std::string text = apply_template(turns);

    // the layout as markup pieces and message indices
    struct item {
        std::string markup;
        int message;  // -1: markup
    };
    std::vector<item> items;
    for (size_t pos = 0; pos < layout.size();) {
        const size_t s = layout.find('\x01', pos);
        const size_t e = s == std::string::npos ? std::string::npos : layout.find('\x02', s);
        if (s == std::string::npos || e == std::string::npos) {
            items.push_back({layout.substr(pos), -1});
            break;
        }
        if (s > pos) {
            items.push_back({layout.substr(pos, s - pos), -1});
        }
        items.push_back({"", std::stoi(layout.substr(s + 1, e - s - 1))});
        pos = e + 1;
    }

    // the same walk over the real text
    size_t pos = 0;
    auto matches = [&](const std::string & s, size_t at) { return text.compare(at, s.size(), s) == 0; };
    for (size_t k = 0; k < items.size(); ++k) {
        if (items[k].message < 0) {
            if (!matches(items[k].markup, pos)) {
                throw std::runtime_error("the chat template wrote its markup differently around the messages; "
                                         "flas-cpp cannot tell the messages from the markup");
            }
            out.push_back({items[k].markup, false});
            pos += items[k].markup.size();
            continue;
        }
        const std::string & content = turns[items[k].message].content;
        const std::string next = k + 1 < items.size() && items[k + 1].message < 0 ? items[k + 1].markup : "";
        bool found = false;
        for (const std::string & candidate : {content, trim(content)}) {
            const size_t end = pos + candidate.size();
            if (matches(candidate, pos) && (k + 1 == items.size() ? end == text.size() : matches(next, end))) {
                out.push_back({candidate, true});
                pos = end;
                found = true;
                break;
            }
        }
        if (!found) {
            throw std::runtime_error("the chat template changes a message's text in a way flas-cpp cannot follow");
        }
    }
    return out;
}

// Splits text at special tokens as llama.cpp's tokenizer does with parse_special: each special
// token, longest first, over what is still text; lstrip/rstrip tokens eat the whitespace beside them.
void flas_prompt::split_control(const std::string & text, std::vector<fragment> & out) const {
    std::vector<fragment> parts = {{LLAMA_TOKEN_NULL, text}};
    for (llama_token t : control_) {
        const char * special = llama_vocab_get_text(vocab_, t);
        const size_t n = strlen(special);
        if (n == 0 || text.find(special) == std::string::npos) {
            continue;
        }
        const llama_token_attr attr = llama_vocab_get_attr(vocab_, t);
        std::vector<fragment> next;
        for (fragment & p : parts) {
            if (p.token != LLAMA_TOKEN_NULL) {
                next.push_back(std::move(p));
                continue;
            }
            std::string rest = std::move(p.text);
            for (size_t at; (at = rest.find(special)) != std::string::npos;) {
                std::string left = rest.substr(0, at);
                if (attr & LLAMA_TOKEN_ATTR_LSTRIP) {
                    left = left.substr(0, left.find_last_not_of(" \t\n\r\f\v") + 1);
                }
                if (!left.empty()) {
                    next.push_back({LLAMA_TOKEN_NULL, left});
                }
                next.push_back({t, ""});
                rest = rest.substr(at + n);
                if (attr & LLAMA_TOKEN_ATTR_RSTRIP) {
                    const size_t keep = rest.find_first_not_of(" \t\n\r\f\v");
                    rest = keep == std::string::npos ? "" : rest.substr(keep);
                }
            }
            if (!rest.empty()) {
                next.push_back({LLAMA_TOKEN_NULL, std::move(rest)});
            }
        }
        parts = std::move(next);
    }
    out.insert(out.end(), std::make_move_iterator(parts.begin()), std::make_move_iterator(parts.end()));
}

std::vector<llama_token> flas_prompt::tokens(const std::vector<flas_turn> & turns, bool content_special) const {
    return tokens_of(segments(turns), content_special);
}

std::vector<llama_token> flas_prompt::text_tokens(const std::string & text, bool parse_special) const {
    return tokens_of({{text, true}}, parse_special);
}

std::vector<llama_token> flas_prompt::tokens_of(const std::vector<segment> & segs, bool content_special) const {
    const int64_t limit = limit_;
    const bool add_bos = llama_vocab_get_add_bos(vocab_);
    const bool add_eos = llama_vocab_get_add_eos(vocab_);

    // fewest tokens the bytes can make
    int64_t least = (int64_t) add_bos + (int64_t) add_eos;
    for (const segment & s : segs) {
        least += (int64_t) ((s.text.size() + max_piece_ - 1) / max_piece_);
    }
    auto too_long = [&](int64_t n, bool at_least) {
        return flas_context_length("the prompt is " + std::string(at_least ? "at least " : "") + std::to_string(n) +
                                   " tokens but a sequence holds " + std::to_string(limit) + " (" + limit_why_ +
                                   "); shorten it or load the model with a larger n_ctx");
    };
    if (least >= limit) {
        throw too_long(least, true);
    }

    // control tokens where the markup has them (and in the text, if asked), text between them
    std::vector<fragment> frags;
    std::unordered_map<std::string, std::vector<fragment>> markup_cache;  // a conversation repeats its markup
    std::string text;
    auto append = [&](const std::vector<fragment> & parts) {
        for (const fragment & f : parts) {
            if (f.token == LLAMA_TOKEN_NULL) {
                text += f.text;
            } else {
                if (!text.empty()) {
                    frags.push_back({LLAMA_TOKEN_NULL, std::move(text)});
                    text.clear();
                }
                frags.push_back(f);
            }
        }
    };
    for (const segment & s : segs) {
        if (s.content && !content_special) {
            text += s.text;
        } else if (s.content) {
            std::vector<fragment> parts;
            split_control(s.text, parts);
            append(parts);
        } else {
            auto it = markup_cache.find(s.text);
            if (it == markup_cache.end()) {
                std::vector<fragment> parts;
                split_control(s.text, parts);
                it = markup_cache.emplace(s.text, std::move(parts)).first;
            }
            append(it->second);
        }
    }
    if (!text.empty()) {
        frags.push_back({LLAMA_TOKEN_NULL, std::move(text)});
    }

    // each text fragment on its own, as llama.cpp's tokenizer takes the fragments between
    // special tokens (a fragment after a special token, or first, gets its space prefix)
    std::vector<llama_token> out;
    if (add_bos) {
        out.push_back(llama_vocab_bos(vocab_));
    }
    for (const fragment & f : frags) {
        if (f.token != LLAMA_TOKEN_NULL) {
            out.push_back(f.token);
        } else {
            const int32_t n = -llama_tokenize(vocab_, f.text.data(), (int32_t) f.text.size(), nullptr, 0, false, false);
            const size_t at = out.size();
            out.resize(at + std::max(n, 0));
            if (n > 0) {
                llama_tokenize(vocab_, f.text.data(), (int32_t) f.text.size(), out.data() + at, n, false, false);
            }
        }
        if ((int64_t) out.size() + add_eos >= limit) {
            throw too_long((int64_t) out.size() + add_eos, &f != &frags.back());
        }
    }
    if (add_eos) {
        out.push_back(llama_vocab_eos(vocab_));
    }
    return out;
}
