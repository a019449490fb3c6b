/*
 * Bad input through the C API: NULL pointers, garbage, freed and wrong-kind handles, corrupt
 * models from a path and from memory, out-of-range settings, too-small buffers, re-entrant
 * calls from a callback. Every case must come back as the expected status with a message,
 * never a crash; run under valgrind by tests/c_api.rs, so invalid reads count as failures too.
 *
 *   bad_input MODEL.gguf SCRATCH_DIR
 *
 * Prints one line per check and a final "N passed, M failed"; exits 1 if any failed.
 */
#include <bitnet.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed;

#define EXPECT(cond, ...)                          \
    do {                                           \
        if (cond) {                                \
            passed++;                              \
        } else {                                   \
            failed++;                              \
            printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            printf(__VA_ARGS__);                   \
            printf("\n");                          \
        }                                          \
    } while (0)

/* The call returned `want` and left a message that contains `needle`. */
#define EXPECT_STATUS(call, want, needle)                                                     \
    do {                                                                                      \
        bitnet_status got_ = (call);                                                          \
        const char *msg_ = bitnet_last_error();                                               \
        EXPECT(got_ == (want) && msg_ && strstr(msg_, (needle)),                              \
               "%s: got %s (\"%s\"), want %s with \"%s\"", #call, bitnet_status_str(got_),    \
               msg_ ? msg_ : "(null)", bitnet_status_str(want), (needle));                    \
        if (got_ == (want)) printf("ok   %-60.60s -> %s\n", #call, msg_);                     \
    } while (0)

/* This process's thread count (Linux), -1 where unknown: a model left alive keeps its worker
 * threads, so a leaked one shows here. */
static int thread_count(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    int n = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &n) == 1) break;
    fclose(f);
    return n;
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = n > 0 ? malloc((size_t)n) : NULL;
    if (data && fread(data, 1, (size_t)n, f) != (size_t)n) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *len = data ? (size_t)n : 0;
    return data;
}

static int write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, len, f);
    return fclose(f) == 0 && w == len ? 0 : -1;
}

struct reentry {
    bitnet_session *session;
    bitnet_model *model;
    bitnet_status nested;        /* what a call on the same session returned */
    bitnet_status model_call;    /* what a call on the model returned */
    bitnet_status freed;         /* what freeing the session from inside returned */
    int calls;
    int stop_after;
    bool free_inside;
};

static bool reenter(const char *text, size_t len, void *user_data) {
    (void)text;
    (void)len;
    struct reentry *r = user_data;
    r->calls++;
    bitnet_token t = 0;
    r->nested = bitnet_session_eval(r->session, &t, 1, BITNET_LOGITS_LAST);
    bitnet_model_info info;
    r->model_call = bitnet_model_get_info(r->model, &info);
    if (r->free_inside && r->calls == 1) r->freed = bitnet_session_free(r->session);
    return r->calls < r->stop_after;
}

static void corrupt_models(const char *model_path, const char *dir, const bitnet_model_params *mp) {
    size_t len = 0;
    unsigned char *good = read_file(model_path, &len);
    EXPECT(good != NULL && len > 4096, "read %s", model_path);
    if (!good) return;
    char path[4096];
    bitnet_model *m = (bitnet_model *)0x1; /* must stay untouched on failure */

    /* Missing and unreadable paths. */
    snprintf(path, sizeof path, "%s/does-not-exist.gguf", dir);
    EXPECT_STATUS(bitnet_model_load(path, mp, &m), BITNET_ERR_MODEL, "does-not-exist.gguf");
    EXPECT(m == (bitnet_model *)0x1, "out written on failure");

    /* Not a GGUF at all. */
    static const char garbage[] = "this is not a model, just some text that is long enough";
    snprintf(path, sizeof path, "%s/garbage.gguf", dir);
    write_file(path, garbage, sizeof garbage);
    EXPECT_STATUS(bitnet_model_load(path, mp, &m), BITNET_ERR_MODEL, "garbage.gguf");
    EXPECT_STATUS(bitnet_model_load_from_buffer((const uint8_t *)garbage, sizeof garbage, mp, &m),
                  BITNET_ERR_MODEL, "");

    /* The real model cut in half: the header parses, the tensors are missing. */
    snprintf(path, sizeof path, "%s/truncated.gguf", dir);
    write_file(path, good, len / 2);
    EXPECT_STATUS(bitnet_model_load(path, mp, &m), BITNET_ERR_MODEL, "truncated.gguf");
    EXPECT_STATUS(bitnet_model_load_from_buffer(good, len / 2, mp, &m), BITNET_ERR_MODEL, "");
    EXPECT_STATUS(bitnet_model_load_from_buffer(good, 7, mp, &m), BITNET_ERR_MODEL, "");

    /* Absurd tensor and metadata counts (bytes 8..24): nothing may be allocated from them. */
    unsigned char *bad = malloc(len);
    memcpy(bad, good, len);
    memset(bad + 8, 0xff, 16);
    snprintf(path, sizeof path, "%s/huge-counts.gguf", dir);
    write_file(path, bad, len);
    EXPECT_STATUS(bitnet_model_load(path, mp, &m), BITNET_ERR_MODEL, "huge-counts.gguf");
    EXPECT_STATUS(bitnet_model_load_from_buffer(bad, len, mp, &m), BITNET_ERR_MODEL, "");

    /* Scrambled tensor data region: the loader must still fail cleanly or load (data is data),
       but not crash; what matters here is no invalid access. */
    memcpy(bad, good, len);
    for (size_t i = 24; i < 4096; i += 7) bad[i] ^= 0x5a;
    bitnet_model *maybe = NULL;
    bitnet_status st = bitnet_model_load_from_buffer(bad, len, mp, &maybe);
    EXPECT(st == BITNET_OK || st == BITNET_ERR_MODEL || st == BITNET_ERR_TOKENIZER,
           "scrambled metadata: %s", bitnet_status_str(st));
    if (st == BITNET_OK) bitnet_model_free(maybe);
    printf("ok   scrambled metadata -> %s\n", bitnet_status_str(st));

    EXPECT(m == (bitnet_model *)0x1, "out written on failure");
    free(bad);
    free(good);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.gguf SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    const char *model_path = argv[1];
    bitnet_model_params mp = bitnet_model_default_params();
    mp.n_threads = 1;

    EXPECT(bitnet_api_version() == BITNET_API_VERSION, "API version");
    EXPECT(strcmp(bitnet_version(), "") != 0, "version string");
    EXPECT(strcmp(bitnet_status_str(12345), "unknown status") == 0, "unknown status code");
    EXPECT(strcmp(bitnet_last_error(), "") == 0, "no error yet");

    /* Loading: NULL arguments, bad params. */
    bitnet_model *model = NULL;
    EXPECT_STATUS(bitnet_model_load(NULL, &mp, &model), BITNET_ERR_NULL_ARGUMENT, "path is NULL");
    EXPECT_STATUS(bitnet_model_load(model_path, &mp, NULL), BITNET_ERR_NULL_ARGUMENT, "out is NULL");
    EXPECT_STATUS(bitnet_model_load_from_buffer(NULL, 10, &mp, &model), BITNET_ERR_NULL_ARGUMENT,
                  "data is NULL");
    /* Paths are bytes on Unix: not UTF-8 is fine, it just does not exist. */
    EXPECT_STATUS(bitnet_model_load("/nonexistent/\xff\xfe", &mp, &model), BITNET_ERR_MODEL,
                  "nonexistent");
    bitnet_model_params bad_kv = mp;
    bad_kv.kv_type = 7;
    EXPECT_STATUS(bitnet_model_load(model_path, &bad_kv, &model), BITNET_ERR_INVALID_ARGUMENT,
                  "kv_type 7");
    bitnet_model_params tok_dir = mp;
    tok_dir.tokenizer_dir = "/tmp";
    unsigned char one = 0;
    EXPECT_STATUS(bitnet_model_load_from_buffer(&one, 1, &tok_dir, &model),
                  BITNET_ERR_INVALID_ARGUMENT, "tokenizer_dir");
    corrupt_models(model_path, argv[2], &mp);
    bitnet_model_params many = mp;
    many.n_threads = UINT32_MAX;
    EXPECT_STATUS(bitnet_model_load(model_path, &many, &model), BITNET_ERR_INVALID_ARGUMENT,
                  "at most 1024");
    /* An out-parameter the library refuses (misaligned) must not leave a model behind that
     * nobody holds: it is checked before anything is loaded. */
    _Alignas(8) unsigned char slot[16];
    bitnet_model_params three = mp;
    three.n_threads = 3;
    int threads_before = thread_count();
    for (int i = 0; i < 3; i++)
        EXPECT_STATUS(bitnet_model_load(model_path, &three, (bitnet_model **)(slot + 1)),
                      BITNET_ERR_INVALID_ARGUMENT, "not aligned");
    EXPECT(thread_count() == threads_before, "no model left behind: %d threads, were %d",
           thread_count(), threads_before);

    if (bitnet_model_load(model_path, &mp, &model) != BITNET_OK) {
        printf("FAIL cannot load %s: %s\n", model_path, bitnet_last_error());
        return 1;
    }
    bitnet_model_info info;
    EXPECT_STATUS(bitnet_model_get_info(model, NULL), BITNET_ERR_NULL_ARGUMENT, "out is NULL");
    EXPECT(bitnet_model_get_info(model, &info) == BITNET_OK && info.n_vocab == 4096, "info");

    /* Handles that are not live models. */
    int on_stack = 0;
    bitnet_model *garbage = (bitnet_model *)(uintptr_t)0x1234;
    EXPECT_STATUS(bitnet_model_get_info(NULL, &info), BITNET_ERR_NULL_ARGUMENT, "model is NULL");
    EXPECT_STATUS(bitnet_model_get_info(garbage, &info), BITNET_ERR_INVALID_HANDLE, "not a live");
    EXPECT_STATUS(bitnet_model_get_info((bitnet_model *)&on_stack, &info),
                  BITNET_ERR_INVALID_HANDLE, "not a live");
    EXPECT_STATUS(bitnet_model_free(garbage), BITNET_ERR_INVALID_HANDLE, "not a live");
    EXPECT(bitnet_model_free(NULL) == BITNET_OK, "free(NULL) is a no-op");
    bitnet_session *session = NULL;
    EXPECT_STATUS(bitnet_session_new(garbage, NULL, &session), BITNET_ERR_INVALID_HANDLE,
                  "not a live");

    /* Tokenize / detokenize: bad text, small buffers, ids outside the vocabulary. */
    _Alignas(8) unsigned char buf_bytes[64];
    bitnet_token ids[64];
    size_t n = 0;
    const char *text = "In the beginning";
    EXPECT_STATUS(bitnet_tokenize(model, "\xc3\x28", 2, true, ids, 64, &n),
                  BITNET_ERR_INVALID_ARGUMENT, "not valid UTF-8");
    EXPECT_STATUS(bitnet_tokenize(model, NULL, 5, true, ids, 64, &n), BITNET_ERR_NULL_ARGUMENT,
                  "text is NULL");
    EXPECT_STATUS(bitnet_tokenize(model, text, strlen(text), true, ids, 64, NULL),
                  BITNET_ERR_NULL_ARGUMENT, "NULL");
    n = 0;
    EXPECT_STATUS(bitnet_tokenize(model, text, strlen(text), true, ids, 2, &n),
                  BITNET_ERR_BUFFER_TOO_SMALL, "holds 2 but 4");
    EXPECT(n == 4, "needed size reported: %zu", n);
    n = 777;
    EXPECT_STATUS(bitnet_tokenize(model, text, strlen(text), true, NULL, 4, &n),
                  BITNET_ERR_NULL_ARGUMENT, "tokens is NULL");
    EXPECT(n == 777, "size left alone on an error that is not BUFFER_TOO_SMALL: %zu", n);
    EXPECT_STATUS(bitnet_tokenize(model, text, strlen(text), true, (bitnet_token *)(buf_bytes + 1),
                                  4, &n),
                  BITNET_ERR_INVALID_ARGUMENT, "aligned");
    EXPECT(n == 777, "size left alone: %zu", n);
    n = 4;
    EXPECT(bitnet_tokenize(model, text, strlen(text), true, ids, n, &n) == BITNET_OK &&
               ids[0] == 0 && ids[1] == 1145 && ids[2] == 263 && ids[3] == 2112,
           "tokenize into an exact buffer");
    char buf[64];
    size_t len = 0;
    bitnet_token out_of_vocab[2] = {1145, 999999};
    EXPECT_STATUS(bitnet_detokenize(model, out_of_vocab, 2, true, buf, sizeof buf, &len),
                  BITNET_ERR_DOES_NOT_FIT, "999999");
    EXPECT_STATUS(bitnet_detokenize(model, ids, 4, true, buf, 5, &len), BITNET_ERR_BUFFER_TOO_SMALL,
                  "holds 5 but 17");
    EXPECT(len == 16, "needed length %zu", len);
    EXPECT(bitnet_detokenize(model, ids, 4, true, buf, len + 1, &len) == BITNET_OK &&
               strcmp(buf, text) == 0,
           "detokenize round trip: %s", buf);
    bitnet_chat_message msgs[2] = {{"user", "hi"}, {NULL, "x"}};
    EXPECT_STATUS(bitnet_chat_apply_template(model, msgs, 2, true, buf, sizeof buf, &len),
                  BITNET_ERR_NULL_ARGUMENT, "messages[1].role is NULL");
    EXPECT_STATUS(bitnet_chat_apply_template(model, NULL, 1, true, buf, sizeof buf, &len),
                  BITNET_ERR_NULL_ARGUMENT, "messages is NULL");

    /* Sessions: sizes, evaluation errors. */
    bitnet_session_params sp = bitnet_session_default_params();
    sp.n_ctx = UINT32_MAX;
    EXPECT_STATUS(bitnet_session_new(model, &sp, &session), BITNET_ERR_INVALID_ARGUMENT, "KV cache");
    sp.n_ctx = 8;
    EXPECT(bitnet_session_new(model, &sp, &session) == BITNET_OK, "session");
    EXPECT_STATUS(bitnet_session_eval(session, out_of_vocab, 2, BITNET_LOGITS_LAST),
                  BITNET_ERR_DOES_NOT_FIT, "outside the vocabulary");
    EXPECT_STATUS(bitnet_session_eval(session, ids, 4, 7), BITNET_ERR_INVALID_ARGUMENT, "logits 7");
    EXPECT_STATUS(bitnet_session_eval(session, NULL, 4, BITNET_LOGITS_LAST), BITNET_ERR_NULL_ARGUMENT,
                  "tokens is NULL");
    bitnet_token nine[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
    EXPECT_STATUS(bitnet_session_eval(session, nine, 9, BITNET_LOGITS_LAST), BITNET_ERR_DOES_NOT_FIT,
                  "context holds 8");
    float logits[8];
    EXPECT_STATUS(bitnet_session_get_logits(session, logits, 8, &n), BITNET_OK, "");
    EXPECT(n == 0, "no logits before an eval: %zu", n);
    bitnet_sampler *sampler = NULL;
    EXPECT(bitnet_sampler_new(NULL, &sampler) == BITNET_OK, "default sampler");
    bitnet_token next = 0;
    EXPECT_STATUS(bitnet_sampler_sample(sampler, session, 0, &next), BITNET_ERR_INVALID_ARGUMENT,
                  "no logits");
    EXPECT(bitnet_session_eval(session, ids, 4, BITNET_LOGITS_LAST) == BITNET_OK, "eval");
    EXPECT_STATUS(bitnet_session_get_logits(session, logits, 8, &n), BITNET_ERR_BUFFER_TOO_SMALL,
                  "holds 8 but 4096");
    EXPECT_STATUS(bitnet_session_eval(session, nine, 5, BITNET_LOGITS_LAST), BITNET_ERR_DOES_NOT_FIT,
                  "full");
    EXPECT_STATUS(bitnet_sampler_sample(sampler, session, 0, NULL), BITNET_ERR_NULL_ARGUMENT,
                  "out is NULL");
    EXPECT_STATUS(bitnet_sampler_sample(sampler, (bitnet_session *)sampler, 0, &next),
                  BITNET_ERR_INVALID_HANDLE, "is a sampler");
    EXPECT_STATUS(bitnet_session_get_info((bitnet_session *)model, NULL), BITNET_ERR_INVALID_HANDLE,
                  "is a model");
    EXPECT_STATUS(bitnet_model_free((bitnet_model *)session), BITNET_ERR_INVALID_HANDLE,
                  "is a session");

    /* Sampling settings out of range. */
    bitnet_sampling_params bad = bitnet_sampling_default_params();
    bitnet_sampler *s2 = NULL;
    bad.temperature = -1.0f;
    EXPECT_STATUS(bitnet_sampler_new(&bad, &s2), BITNET_ERR_INVALID_ARGUMENT, "temperature");
    bad = bitnet_sampling_default_params();
    bad.top_p = 0.0f;
    EXPECT_STATUS(bitnet_sampler_new(&bad, &s2), BITNET_ERR_INVALID_ARGUMENT, "top_p");
    bad = bitnet_sampling_default_params();
    bad.presence_penalty = NAN;
    EXPECT_STATUS(bitnet_sampler_new(&bad, &s2), BITNET_ERR_INVALID_ARGUMENT, "presence_penalty");
    EXPECT(s2 == NULL, "no sampler on failure");

    /* Generation: empty and oversized prompts, bad stop strings, bad sampling. */
    bitnet_generate_params gp = bitnet_generate_default_params();
    gp.max_tokens = 4;
    bitnet_generation g;
    bitnet_token gen[8];
    EXPECT_STATUS(bitnet_session_generate(session, ids, 0, &gp, gen, 8, &g), BITNET_ERR_DOES_NOT_FIT,
                  "empty prompt");
    EXPECT_STATUS(bitnet_session_generate(session, nine, 9, &gp, gen, 8, &g), BITNET_ERR_DOES_NOT_FIT,
                  "context holds 8");
    EXPECT_STATUS(bitnet_session_generate(session, ids, 4, &gp, NULL, 8, &g), BITNET_ERR_NULL_ARGUMENT,
                  "tokens_out is NULL");
    gp.n_stop = 1;
    EXPECT_STATUS(bitnet_session_generate(session, ids, 4, &gp, gen, 8, &g), BITNET_ERR_NULL_ARGUMENT,
                  "stop is NULL");
    const char *stops[2] = {"ok", "\xff"};
    gp.stop = stops;
    gp.n_stop = 2;
    EXPECT_STATUS(bitnet_session_generate(session, ids, 4, &gp, gen, 8, &g),
                  BITNET_ERR_INVALID_ARGUMENT, "stop[1] is not valid UTF-8");
    gp = bitnet_generate_default_params();
    gp.max_tokens = 4;
    gp.sampling.top_p = 2.0f;
    EXPECT_STATUS(bitnet_session_generate(session, ids, 4, &gp, gen, 8, &g),
                  BITNET_ERR_INVALID_ARGUMENT, "top_p");

    /* Re-entrant calls from the callback: same session busy, model fine; false stops. */
    gp = bitnet_generate_default_params();
    gp.max_tokens = 4;
    struct reentry r = {session, model, BITNET_OK, BITNET_ERR_INTERNAL, BITNET_OK, 0, 2, false};
    gp.on_text = reenter;
    gp.user_data = &r;
    EXPECT(bitnet_session_generate(session, ids, 4, &gp, gen, 8, &g) == BITNET_OK, "generate: %s",
           bitnet_last_error());
    EXPECT(r.nested == BITNET_ERR_BUSY, "nested call: %s", bitnet_status_str(r.nested));
    EXPECT(r.model_call == BITNET_OK, "model call inside the callback");
    EXPECT(g.finish == BITNET_FINISH_CANCELLED && r.calls == 2, "cancelled after 2 pieces: %d",
           (int)g.finish);
    EXPECT(g.n_tokens == 2 || g.n_tokens == 3, "tokens before the stop: %zu", g.n_tokens);

    /* The callback frees its own session: the generation finishes, then the handle is dead. */
    r = (struct reentry){session, model, BITNET_OK, BITNET_OK, BITNET_ERR_INTERNAL, 0, 100, true};
    EXPECT(bitnet_session_generate(session, ids, 4, &gp, gen, 8, &g) == BITNET_OK,
           "generate with a free inside");
    EXPECT(r.freed == BITNET_OK, "free inside the callback");
    EXPECT_STATUS(bitnet_session_get_info(session, NULL), BITNET_ERR_INVALID_HANDLE, "not a live");
    EXPECT_STATUS(bitnet_session_free(session), BITNET_ERR_INVALID_HANDLE, "not a live");

    /* A session outlives its model's handle. */
    EXPECT(bitnet_session_new(model, NULL, &session) == BITNET_OK, "second session");
    EXPECT(bitnet_model_free(model) == BITNET_OK, "model free");
    EXPECT_STATUS(bitnet_model_get_info(model, &info), BITNET_ERR_INVALID_HANDLE, "not a live");
    EXPECT_STATUS(bitnet_model_free(model), BITNET_ERR_INVALID_HANDLE, "not a live");
    gp = bitnet_generate_default_params();
    gp.max_tokens = 3;
    EXPECT(bitnet_session_generate(session, ids, 4, &gp, gen, 8, &g) == BITNET_OK && g.n_tokens == 3 &&
               gen[0] == 273,
           "generation after the model handle is freed: %s", bitnet_last_error());
    EXPECT(bitnet_session_free(session) == BITNET_OK, "session free");
    EXPECT(bitnet_sampler_free(sampler) == BITNET_OK, "sampler free");
    EXPECT_STATUS(bitnet_sampler_free(sampler), BITNET_ERR_INVALID_HANDLE, "not a live");

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
