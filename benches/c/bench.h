/*
 * What the bench's C programs share: the monotonic clock, failing loudly,
 * and nearest-rank percentiles, as matrix-tui computes them.
 */
#ifndef MATRIX_BENCH_H
#define MATRIX_BENCH_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int compare(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The q quantile (0 < q <= 1) of n sorted values, by nearest rank. */
static uint64_t rank(uint64_t *sorted, size_t n, double q) {
    size_t index = (size_t)(q * (double)n + 0.999999);
    if (index < 1) index = 1;
    if (index > n) index = n;
    return sorted[index - 1];
}

#endif
