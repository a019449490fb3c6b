/*
 * Greedy generation through the C API: the text streams to stdout, the token ids go to stderr.
 *
 *   generate MODEL PROMPT N_TOKENS [--chat] [--buffer] [--manual] [--threads T]
 *
 * --chat     wrap PROMPT as a user message in the model's chat template
 * --buffer   read the model file into memory and load it with bitnet_model_load_from_buffer
 * --manual   drive the loop by hand (bitnet_session_eval + bitnet_sampler_sample +
 *            bitnet_detokenize) instead of bitnet_session_generate
 *
 * Build: cc generate.c $(pkg-config --cflags --libs bitnet) -o generate
 */
#include <bitnet.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, bitnet_status st) {
    fprintf(stderr, "error: %s: %s (%s)\n", what, bitnet_status_str(st), bitnet_last_error());
    return 1;
}

static bool print_text(const char *text, size_t len, void *user_data) {
    (void)user_data;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return true;
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *data = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (data = malloc(n ? (size_t)n : 1))) {
            if (fread(data, 1, (size_t)n, f) != (size_t)n) {
                free(data);
                data = NULL;
            }
            *len = (size_t)n;
        }
    }
    fclose(f);
    return data;
}

/* The prompt's ids: plain text, or the chat template rendered over one user message. */
static bitnet_status prompt_ids(bitnet_model *model, const char *prompt, bool chat,
                                bitnet_token **ids, size_t *n) {
    bitnet_model_info info;
    bitnet_status st = bitnet_model_get_info(model, &info);
    if (st != BITNET_OK) return st;
    const char *text = prompt;
    char *rendered = NULL;
    bool add_bos = info.add_bos;
    if (chat) {
        bitnet_chat_message msg = {"user", prompt};
        size_t len = 0;
        st = bitnet_chat_apply_template(model, &msg, 1, true, NULL, 0, &len);
        if (st != BITNET_ERR_BUFFER_TOO_SMALL) return st;
        rendered = malloc(len + 1);
        if (!rendered) return BITNET_ERR_OUT_OF_MEMORY;
        st = bitnet_chat_apply_template(model, &msg, 1, true, rendered, len + 1, &len);
        if (st != BITNET_OK) {
            free(rendered);
            return st;
        }
        text = rendered;
        add_bos = false; /* the template writes BOS itself */
    }
    size_t count = 0;
    st = bitnet_tokenize(model, text, strlen(text), add_bos, NULL, 0, &count);
    if (st == BITNET_OK || st == BITNET_ERR_BUFFER_TOO_SMALL) {
        *ids = malloc((count ? count : 1) * sizeof(bitnet_token));
        st = *ids ? bitnet_tokenize(model, text, strlen(text), add_bos, *ids, count, n)
                  : BITNET_ERR_OUT_OF_MEMORY;
    }
    free(rendered);
    return st;
}

/* Greedy decoding by hand; the same tokens as bitnet_session_generate. */
static bitnet_status manual(bitnet_model *model, bitnet_session *session, const bitnet_token *ids,
                            size_t n_ids, size_t max_tokens, bitnet_token *out, size_t *n_out) {
    bitnet_sampling_params sp = bitnet_sampling_greedy_params();
    bitnet_sampler *sampler = NULL;
    bitnet_status st = bitnet_sampler_new(&sp, &sampler);
    if (st != BITNET_OK) return st;
    st = bitnet_session_eval(session, ids, n_ids, BITNET_LOGITS_LAST);
    *n_out = 0;
    while (st == BITNET_OK && *n_out < max_tokens) {
        bitnet_token next;
        bool stop = false;
        st = bitnet_sampler_sample(sampler, session, n_ids, &next);
        if (st == BITNET_OK) st = bitnet_token_is_stop(model, next, &stop);
        if (st != BITNET_OK || stop) break;
        out[(*n_out)++] = next;
        if (*n_out < max_tokens) st = bitnet_session_eval(session, &next, 1, BITNET_LOGITS_LAST);
    }
    if (st == BITNET_OK) {
        size_t len = 0;
        st = bitnet_detokenize(model, out, *n_out, true, NULL, 0, &len);
        char *text = st == BITNET_ERR_BUFFER_TOO_SMALL ? malloc(len + 1) : NULL;
        if (text) {
            st = bitnet_detokenize(model, out, *n_out, true, text, len + 1, &len);
            if (st == BITNET_OK) print_text(text, len, NULL);
            free(text);
        }
    }
    bitnet_status freed = bitnet_sampler_free(sampler);
    return st != BITNET_OK ? st : freed;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL PROMPT N_TOKENS [--chat] [--buffer] [--manual] [--threads T]\n",
                argv[0]);
        return 2;
    }
    const char *path = argv[1], *prompt = argv[2];
    size_t max_tokens = strtoul(argv[3], NULL, 10);
    bool chat = false, buffer = false, by_hand = false;
    bitnet_model_params mp = bitnet_model_default_params();
    for (int i = 4; i < argc; i++) {
        if (!strcmp(argv[i], "--chat")) chat = true;
        else if (!strcmp(argv[i], "--buffer")) buffer = true;
        else if (!strcmp(argv[i], "--manual")) by_hand = true;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) mp.n_threads = (uint32_t)atoi(argv[++i]);
        else {
            fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (bitnet_api_version() != BITNET_API_VERSION) {
        fprintf(stderr, "library ABI %u, header %u\n", bitnet_api_version(), BITNET_API_VERSION);
        return 1;
    }

    bitnet_model *model = NULL;
    bitnet_status st;
    if (buffer) {
        size_t len = 0;
        unsigned char *data = read_file(path, &len);
        if (!data) {
            perror(path);
            return 3;
        }
        st = bitnet_model_load_from_buffer(data, len, &mp, &model);
        free(data); /* the library keeps its own copy */
    } else {
        st = bitnet_model_load(path, &mp, &model);
    }
    if (st != BITNET_OK) {
        fail("load", st);
        return 3;
    }

    int rc = 0;
    bitnet_token *ids = NULL, *out = NULL;
    size_t n_ids = 0;
    bitnet_session *session = NULL;
    if ((st = prompt_ids(model, prompt, chat, &ids, &n_ids)) != BITNET_OK) {
        rc = fail("prompt", st);
        goto done;
    }
    if ((st = bitnet_session_new(model, NULL, &session)) != BITNET_OK) {
        rc = fail("session", st);
        goto done;
    }
    out = malloc((max_tokens ? max_tokens : 1) * sizeof(bitnet_token));
    if (!out) {
        rc = fail("tokens", BITNET_ERR_OUT_OF_MEMORY);
        goto done;
    }
    size_t n_out = 0;
    const char *finish = "length";
    if (by_hand) {
        st = manual(model, session, ids, n_ids, max_tokens, out, &n_out);
        finish = n_out < max_tokens ? "eos" : "length";
    } else {
        bitnet_generate_params gp = bitnet_generate_default_params();
        gp.max_tokens = (uint32_t)max_tokens;
        gp.on_text = print_text;
        bitnet_generation g;
        st = bitnet_session_generate(session, ids, n_ids, &gp, out, max_tokens, &g);
        if (st == BITNET_OK) {
            static const char *const names[] = {"eos", "stop", "length", "context", "cancelled"};
            n_out = g.n_tokens;
            finish = names[g.finish];
        }
    }
    if (st != BITNET_OK) {
        rc = fail("generate", st);
        goto done;
    }
    fprintf(stderr, "prompt:");
    for (size_t i = 0; i < n_ids; i++) fprintf(stderr, " %u", ids[i]);
    fprintf(stderr, "\ngenerated:");
    for (size_t i = 0; i < n_out; i++) fprintf(stderr, " %u", out[i]);
    fprintf(stderr, "\nfinish: %s\n", finish);

done:
    free(ids);
    free(out);
    bitnet_session_free(session);
    bitnet_model_free(model);
    return rc;
}
