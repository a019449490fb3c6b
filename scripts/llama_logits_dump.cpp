// llama-logits-dump: run a GGUF model in llama.cpp on given token ids and write the logits at
// every position plus a greedy continuation, as JSON. Our own test tool (not llama.cpp code);
// scripts/build-llama-cpp.sh compiles it against the libllama it builds.
//
//   llama-logits-dump -m model.gguf -i ids.json -o out.json [-n 12] [-t 1] [--kv f32|f16]
//                     [--flash-attn]
//
// ids.json: a JSON list of token ids ([1, 2, 3]) or a list of such lists (several sequences).
// Each sequence is run in a fresh KV cache: the prompt is decoded as ONE batch with logits
// requested at every position, then N greedy tokens (argmax, first index on ties) are decoded
// one at a time; the N-th generated token is also decoded, so `logits_full` has T+N rows, the
// same shape as teacher-forced logits over prompt+continuation.
//
// out.json:
// {
//   "tool": "llama-logits-dump", "model": PATH, "n_vocab": V, "n_threads": 1,
//   "kv_type": "f32", "flash_attn": false, "n_new": N,
//   "sequences": [ {
//       "input_ids": [T ints],
//       "logits": [[V floats] x T],              // prompt logits, one batch
//       "greedy_new_token_ids": [N ints],
//       "logits_full": [[V floats] x (T+N)]      // prompt rows + one row per generated token
//   } ]
// }
#include "llama.h"

#include <cctype>
#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static void die(const char * msg) {
    fprintf(stderr, "llama-logits-dump: %s\n", msg);
    exit(1);
}

// Minimal parser for a list of ints or a list of lists of ints.
static std::vector<std::vector<llama_token>> parse_ids(const std::string & s) {
    std::vector<std::vector<llama_token>> seqs;
    std::vector<llama_token> flat;
    int depth = 0, max_depth = 0;
    std::vector<llama_token> cur;
    for (size_t i = 0; i < s.size();) {
        char c = s[i];
        if (c == '[') {
            depth++;
            if (depth > max_depth) max_depth = depth;
            if (depth == 2) cur.clear();
            i++;
        } else if (c == ']') {
            if (depth == 2) seqs.push_back(cur);
            depth--;
            i++;
        } else if (c == '-' || isdigit((unsigned char) c)) {
            char * end = nullptr;
            long v = strtol(s.c_str() + i, &end, 10);
            i = end - s.c_str();
            if (depth == 1) flat.push_back((llama_token) v);
            else if (depth == 2) cur.push_back((llama_token) v);
            else die("ids JSON nested too deeply");
        } else {
            i++;
        }
    }
    if (max_depth == 1) seqs.push_back(flat);
    return seqs;
}

static void write_row(FILE * f, const float * row, int n) {
    fputc('[', f);
    for (int j = 0; j < n; j++) {
        if (j) fputc(',', f);
        fprintf(f, "%.9g", row[j]);
    }
    fputc(']', f);
}

static int argmax(const float * row, int n) {
    int best = 0;
    for (int j = 1; j < n; j++) {
        if (row[j] > row[best]) best = j;
    }
    return best;
}

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");
    std::string model_path, ids_path, out_path, kv = "f32";
    int n_new = 12, n_threads = 1;
    bool flash = false;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) die(("missing value for " + a).c_str());
            return argv[++i];
        };
        if (a == "-m") model_path = next();
        else if (a == "-i") ids_path = next();
        else if (a == "-o") out_path = next();
        else if (a == "-n") n_new = atoi(next().c_str());
        else if (a == "-t") n_threads = atoi(next().c_str());
        else if (a == "--kv") kv = next();
        else if (a == "--flash-attn") flash = true;
        else die(("unknown argument " + a + "\nusage: llama-logits-dump -m model.gguf -i ids.json -o out.json [-n 12] [-t 1] [--kv f32|f16] [--flash-attn]").c_str());
    }
    if (model_path.empty() || ids_path.empty() || out_path.empty()) {
        die("usage: llama-logits-dump -m model.gguf -i ids.json -o out.json [-n 12] [-t 1] [--kv f32|f16] [--flash-attn]");
    }
    std::ifstream in(ids_path);
    if (!in) die("cannot read ids file");
    std::stringstream ss;
    ss << in.rdbuf();
    auto seqs = parse_ids(ss.str());
    if (seqs.empty()) die("no sequences in ids file");

    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mp);
    if (!model) die("unable to load model");
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    size_t max_len = 0;
    for (auto & s : seqs) max_len = std::max(max_len, s.size());
    const uint32_t n_ctx = (uint32_t) (max_len + n_new + 8);

    FILE * f = fopen(out_path.c_str(), "w");
    if (!f) die("cannot write output");
    fprintf(f, "{\"tool\":\"llama-logits-dump\",\"model\":\"%s\",\"n_vocab\":%d,\"n_threads\":%d,"
               "\"kv_type\":\"%s\",\"flash_attn\":%s,\"n_new\":%d,\"sequences\":[",
            model_path.c_str(), n_vocab, n_threads, kv.c_str(), flash ? "true" : "false", n_new);

    for (size_t si = 0; si < seqs.size(); si++) {
        const auto & ids = seqs[si];
        const int T = (int) ids.size();
        if (T == 0) die("empty sequence");
        for (auto t : ids) {
            if (t < 0 || t >= n_vocab) die("token id out of range");
        }
        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = n_ctx;
        cp.n_batch = n_ctx;
        cp.n_ubatch = n_ctx;
        cp.n_seq_max = 1;
        cp.n_threads = n_threads;
        cp.n_threads_batch = n_threads;
        cp.flash_attn_type = flash ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
        cp.type_k = kv == "f16" ? GGML_TYPE_F16 : GGML_TYPE_F32;
        cp.type_v = cp.type_k;
        cp.no_perf = true;
        llama_context * ctx = llama_init_from_model(model, cp);
        if (!ctx) die("failed to create context");

        std::vector<std::vector<float>> rows;
        llama_batch batch = llama_batch_init(T, 0, 1);
        for (int i = 0; i < T; i++) {
            batch.token[i] = ids[i];
            batch.pos[i] = i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = 1;
        }
        batch.n_tokens = T;
        if (llama_decode(ctx, batch) != 0) die("llama_decode failed on the prompt");
        for (int i = 0; i < T; i++) {
            const float * l = llama_get_logits_ith(ctx, i);
            if (!l) die("no logits");
            rows.emplace_back(l, l + n_vocab);
        }
        llama_batch_free(batch);

        std::vector<llama_token> gen;
        llama_batch one = llama_batch_init(1, 0, 1);
        for (int k = 0; k < n_new; k++) {
            llama_token tok = argmax(rows.back().data(), n_vocab);
            gen.push_back(tok);
            one.token[0] = tok;
            one.pos[0] = T + k;
            one.n_seq_id[0] = 1;
            one.seq_id[0][0] = 0;
            one.logits[0] = 1;
            one.n_tokens = 1;
            if (llama_decode(ctx, one) != 0) die("llama_decode failed during generation");
            const float * l = llama_get_logits_ith(ctx, -1);
            rows.emplace_back(l, l + n_vocab);
        }
        llama_batch_free(one);

        fprintf(f, "%s{\"input_ids\":[", si ? "," : "");
        for (int i = 0; i < T; i++) fprintf(f, "%s%d", i ? "," : "", ids[i]);
        fprintf(f, "],\"logits\":[");
        for (int i = 0; i < T; i++) {
            if (i) fputc(',', f);
            write_row(f, rows[i].data(), n_vocab);
        }
        fprintf(f, "],\"greedy_new_token_ids\":[");
        for (size_t k = 0; k < gen.size(); k++) fprintf(f, "%s%d", k ? "," : "", gen[k]);
        fprintf(f, "],\"logits_full\":[");
        for (size_t i = 0; i < rows.size(); i++) {
            if (i) fputc(',', f);
            write_row(f, rows[i].data(), n_vocab);
        }
        fprintf(f, "]}");
        llama_free(ctx);
    }
    fprintf(f, "]}\n");
    fclose(f);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
