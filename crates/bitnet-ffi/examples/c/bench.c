/*
 * Per-token cost of greedy decoding through the C API, for comparison with the same work
 * through the Rust API (examples/bench_rust.rs prints the same lines; scripts/bench-capi.sh
 * runs both).
 *
 *   bench MODEL N_TOKENS REPS [THREADS]
 *
 * generate: bitnet_session_generate with a streaming callback, its generation_ms / tokens;
 * loop:     bitnet_sampler_sample + bitnet_session_eval per token, timed around the loop;
 * call:     one bitnet_session_get_info, the fixed cost of any call (handle lookup, lock,
 *           panic guard);
 * sample:   one greedy bitnet_sampler_sample on the session's logits (C: the call's fixed cost
 *           plus the copy of the logits the sampler works on; both: the argmax), the part
 *           of a token's work where the two APIs differ beyond the fixed cost of a call.
 * Each figure is the median over REPS runs, after one warm-up run.
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#include <bitnet.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static bool count_text(const char *text, size_t len, void *user_data) {
    (void)text;
    *(size_t *)user_data += len;
    return true;
}

#define CHECK(call)                                                                         \
    do {                                                                                    \
        bitnet_status st_ = (call);                                                         \
        if (st_ != BITNET_OK) {                                                             \
            fprintf(stderr, "%s: %s (%s)\n", #call, bitnet_status_str(st_), bitnet_last_error()); \
            exit(1);                                                                        \
        }                                                                                   \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL N_TOKENS REPS [THREADS]\n", argv[0]);
        return 2;
    }
    int n_tokens = atoi(argv[2]), reps = atoi(argv[3]);
    if (n_tokens < 1 || reps < 1 || reps > 1000) return 2;
    bitnet_model_params mp = bitnet_model_default_params();
    if (argc > 4) mp.n_threads = (uint32_t)atoi(argv[4]);
    bitnet_model *model;
    CHECK(bitnet_model_load(argv[1], &mp, &model));
    bitnet_token prompt[16];
    size_t n_prompt;
    const char *text = "In the beginning";
    CHECK(bitnet_tokenize(model, text, strlen(text), true, prompt, 16, &n_prompt));
    bitnet_session *session;
    CHECK(bitnet_session_new(model, NULL, &session));
    bitnet_sampling_params greedy = bitnet_sampling_greedy_params();
    bitnet_sampler *sampler;
    CHECK(bitnet_sampler_new(&greedy, &sampler));
    bitnet_token *out = malloc((size_t)n_tokens * sizeof *out);
    double *gen = malloc((size_t)reps * sizeof *gen), *loop = malloc((size_t)reps * sizeof *loop);
    if (!out || !gen || !loop) return 1;

    for (int r = -1; r < reps; r++) {
        size_t bytes = 0;
        bitnet_generate_params gp = bitnet_generate_default_params();
        gp.max_tokens = (uint32_t)n_tokens;
        gp.ignore_eos = true;
        gp.on_text = count_text;
        gp.user_data = &bytes;
        bitnet_generation g;
        CHECK(bitnet_session_truncate(session, 0));
        CHECK(bitnet_session_generate(session, prompt, n_prompt, &gp, out, (size_t)n_tokens, &g));

        CHECK(bitnet_session_truncate(session, 0));
        CHECK(bitnet_session_eval(session, prompt, n_prompt, BITNET_LOGITS_LAST));
        double t0 = now_ms();
        for (int i = 0; i < n_tokens; i++) {
            bitnet_token next;
            CHECK(bitnet_sampler_sample(sampler, session, n_prompt, &next));
            CHECK(bitnet_session_eval(session, &next, 1, BITNET_LOGITS_LAST));
        }
        double t1 = now_ms();
        if (r >= 0) {
            gen[r] = g.generation_ms / (double)g.n_tokens;
            loop[r] = (t1 - t0) / n_tokens;
        }
    }

    const int calls = 1000000;
    bitnet_session_info info;
    double t0 = now_ms();
    for (int i = 0; i < calls; i++) CHECK(bitnet_session_get_info(session, &info));
    double call_ns = (now_ms() - t0) * 1e6 / calls;

    CHECK(bitnet_session_truncate(session, 0));
    CHECK(bitnet_session_eval(session, prompt, n_prompt, BITNET_LOGITS_LAST));
    const int samples = 100000;
    bitnet_token sink = 0;
    t0 = now_ms();
    for (int i = 0; i < samples; i++) CHECK(bitnet_sampler_sample(sampler, session, n_prompt, &sink));
    double sample_us = (now_ms() - t0) * 1e3 / samples;

    printf("api c\nthreads %u\ntokens %d\nreps %d\n", mp.n_threads, n_tokens, reps);
    printf("generate_ms_per_token %.4f\nloop_ms_per_token %.4f\ncall_ns %.1f\nsample_us %.3f\n",
           median(gen, reps), median(loop, reps), call_ns, sample_us);
    free(out);
    free(gen);
    free(loop);
    bitnet_sampler_free(sampler);
    bitnet_session_free(session);
    bitnet_model_free(model);
    return 0;
}
