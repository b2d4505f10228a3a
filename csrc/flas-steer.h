// How a request is steered, in one shape for the engine, the scheduler and the rules.
#pragma once

#include "flas-schedule.h"

#include <string>

// How a request is steered: a concept, a strength per generated token, N Euler steps. A change
// (flas_engine::steer) replaces it whole, its schedule counted from the change.
struct flas_steer {
    std::string concept;              // empty: unsteered
    flas_schedule flowtime = flas_schedule::constant(0.0f);  // T per generated token; 0 throughout: unsteered
    int      n_steps     = 1;

    bool unsteered() const { return concept.empty() || flowtime.max() == 0.0f; }
};
