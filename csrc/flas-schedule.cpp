#include "flas-schedule.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

flas_schedule flas_schedule::of(const flas_request_params & params) {
    const flas_breakpoint * points = params.schedule;
    const int n = params.n_schedule;
    if (points == nullptr && n == 0) {
        return constant(params.flowtime);
    }
    if (points == nullptr || n < 1) {
        throw std::invalid_argument("flowtime schedule: needs at least one breakpoint (token, flowtime), e.g. "
                                    "[[0, 0.5], [32, 2.0]]");
    }
    flas_schedule s;
    s.points.assign(points, points + n);
    for (int i = 0; i < n; ++i) {
        const flas_breakpoint & p = s.points[i];
        if (p.token < 0 || (i > 0 && p.token <= s.points[i - 1].token)) {
            throw std::invalid_argument("flowtime schedule: tokens must be >= 0 and strictly ascending, got token " +
                                        std::to_string(p.token) + " at breakpoint " + std::to_string(i) +
                                        (i > 0 ? " after " + std::to_string(s.points[i - 1].token) : std::string()));
        }
    }
    return s;
}

float flas_schedule::at(int token) const {
    const auto after = std::find_if(points.begin(), points.end(), [&](const flas_breakpoint & p) { return p.token > token; });
    if (after == points.begin()) {
        return after->flowtime;
    }
    const flas_breakpoint & a = *(after - 1);
    if (after == points.end()) {
        return a.flowtime;
    }
    const float w = (float) (token - a.token) / (float) (after->token - a.token);
    return a.flowtime + w * (after->flowtime - a.flowtime);
}

float flas_schedule::max() const {
    float m = 0.0f;
    for (const flas_breakpoint & p : points) {
        m = std::max(m, p.flowtime);
    }
    return m;
}

bool flas_schedule::is_constant() const {
    return std::all_of(points.begin(), points.end(), [&](const flas_breakpoint & p) { return p.flowtime == points[0].flowtime; });
}
