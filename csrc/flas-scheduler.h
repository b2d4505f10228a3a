// The worker's side of the engine: admission of queued requests into the runtime's sequences
// (prompt-prefix reuse, slot choice) and continuous batching, one llama_decode per step over
// every busy sequence, with delivery of tokens and ends to the board. Only the engine's worker
// calls it (and run_exclusive, holding the step lock), so nothing here is locked.
#pragma once

#include "flas-board.h"
#include "flas-runtime.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

class flas_scheduler {
  public:
    flas_scheduler(flas_runtime & rt, flas_board & board);

    // One step: cancelled requests leave their sequences, free sequences take queued requests,
    // changes of steering take effect, then one llama_decode for all.
    void step();
    // Each sequence's epoch (the runtime's count of changes to it).
    std::vector<uint64_t> epochs() const;
    // After an exclusive call: a sequence changed since `before` is no longer reused for a
    // prefix, and a request decoding in it ends with an error.
    void after_exclusive(const std::vector<uint64_t> & before);

  private:
    // A request decoding in a sequence: its progress.
    struct running {
        std::shared_ptr<flas_ticket> ticket;
        flas_steer steer;            // the request's, until a change replaces it
        int    origin = 0;           // the generated token steer's schedule counts from
        size_t n_fed = 0;            // prompt tokens in the sequence
        int    n_out = 0;            // tokens generated
        llama_token pending = -1;    // sampled, to be decoded next step
        bool   sampled_once = false;
        flas_clock::time_point t_start;
    };
    struct slot {
        std::vector<llama_token> tokens;  // what the sequence holds
        bool trusted = false;             // tokens and runtime agree (false after errors, exclusive calls)
        uint64_t last_used = 0;
        std::unique_ptr<running> run;     // the request decoding in it
    };

    void drop_cancelled();
    void admit(std::shared_ptr<flas_ticket> t);
    bool restyle(int seq);
    void retime_now(int seq);
    void adopt(int seq, const flas_steer & next);
    flas_token_data token_data(int seq, llama_token tok);
    void decode();
    void finish(int seq, flas_finish reason, flas_status status = FLAS_OK, const std::string & error = "");
    bool reusable(int seq, const flas_request & req) const;
    bool retime(int seq);
    int  choose_slot(const flas_request & req) const;

    flas_runtime & rt_;
    flas_board & board_;
    std::vector<slot> slots_;  // one per runtime sequence
    uint64_t tick_ = 0;
};
