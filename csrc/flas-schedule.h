// A request's strength: its flowtime as a schedule over the generated tokens (flas.h, struct
// flas_breakpoint). A plain flowtime T is the schedule {(0, T)}, so the engine has one shape for
// both and a constant schedule steers exactly as the number does.
#pragma once

#include "flas.h"

#include <vector>

struct flas_schedule {
    std::vector<flas_breakpoint> points;  // tokens strictly ascending; at least one

    static flas_schedule constant(float flowtime) { return {{{0, flowtime}}}; }
    // A request's: its schedule when it has one (its breakpoints checked: std::invalid_argument
    // saying what is wrong and how to write it), else its flowtime. The flowtimes themselves are
    // checked as a plain flowtime is, by flas_request_check.
    static flas_schedule of(const flas_request_params & params);

    // The flowtime of generated token i: linear between the breakpoints around it, held outside.
    float at(int token) const;
    float max() const;                   // > 0: the request needs its concept
    bool  is_constant() const;           // one flowtime for every token
};
