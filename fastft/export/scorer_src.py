"""The source of `fastft-score`, the small llama.cpp program the export's retention gate runs.

Why a program of our own: the gate needs llama.cpp's per-position log-probabilities on token ids
fastft chooses (the training ids, scored under the training mask), and llama.cpp's tools score
whole chunks (llama-perplexity) or generate. ctypes would need a shared libllama, and fastft
builds llama.cpp with static libraries (self-contained binaries); a second, shared build would
cost minutes. So this one file is compiled as one more target of the same cmake build that makes
llama-quantize: cmake includes SCORE_CMAKE right after llama.cpp's `project()` (the documented
CMAKE_PROJECT_<name>_INCLUDE hook), so llama.cpp's own files stay untouched, and building the
target compiles this file and links the libraries already built (seconds, not a rebuild).

The files are written into the cached llama.cpp source by fastft.export.llamacpp when it
configures the build. The source is kept here as text, not as a .cpp file in the package, so that
a wheel carries it without packaging rules.

It is also the export's load check: the GGUF is loaded once, for both. Given a prompt, it
continues it greedily as llama-simple does (special tokens parsed; an end-of-generation token
ends it, unprinted), so the check costs a few tokens rather than a second process loading the
file (and llama-simple's fixed 4 threads).

Protocol (little-endian int32 words; floats as float32):
  request: MAGIC, n_texts, {n_bytes, bytes padded to 4}*, n_generate, n_bytes, prompt padded to 4,
           n_seqs, {n_tokens, ids[n_tokens], n_pos, {pos, target}*}*, k
  stdin:   per seq and scored pos, ids[k]: the reference's top-k, read only once every sequence
           is decoded, so the export can start the program as soon as the GGUF is written, while
           its 16-bit side (which gives those ids) is still being measured
  result:  {n_ids, ids[n_ids]} per text (the GGUF's own tokenizer, special tokens parsed),
           n_bytes, the continuation padded to 4 (none when n_generate is 0), its seconds (float),
           then per seq and scored pos: log p(target), log p(ids[j]) for j < k
  where `pos` is the position whose logits predict `target` (the token at pos + 1).
"""

SCORER = "fastft-score"
MAGIC = 0x33534646          # "FFS3": the top-k ids on stdin

SCORE_CMAKE = """\
# Written by fastft (fastft/export/scorer_src.py): its retention gate's scorer, one more target of
# llama.cpp's build. Included after project(); `llama` is a target by generation time.
add_executable(fastft-score ${CMAKE_CURRENT_LIST_DIR}/fastft-score.cpp)
target_link_libraries(fastft-score PRIVATE llama ${CMAKE_THREAD_LIBS_INIT})
target_compile_features(fastft-score PRIVATE cxx_std_17)
# Where llama.cpp puts its tools (it sets CMAKE_RUNTIME_OUTPUT_DIRECTORY after this file runs).
set_target_properties(fastft-score PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
"""

SCORE_CPP = r"""// Written by fastft (fastft/export/scorer_src.py); see the protocol there.
#include "llama.h"
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <chrono>
#include <cstring>
#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

static std::vector<int32_t> words;
static size_t at = 0;

static int32_t next_word() {
    if (at >= words.size()) { fprintf(stderr, "fastft-score: request ends early\n"); exit(3); }
    return words[at++];
}

static void quiet_log(enum ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static bool read_request(const char * path) {
    FILE * f = fopen(path, "rb");
    if (!f) return false;
    int32_t w;
    while (fread(&w, 4, 1, f) == 1) words.push_back(w);
    fclose(f);
    return true;
}

static void put(FILE * out, const void * p, size_t n) {
    if (fwrite(p, 1, n, out) != n) { fprintf(stderr, "fastft-score: cannot write\n"); exit(4); }
}

static std::string next_text() {
    int32_t n_bytes = next_word();
    if (n_bytes < 0 || at + (n_bytes + 3) / 4 > words.size()) {
        fprintf(stderr, "fastft-score: request ends early\n");
        exit(3);
    }
    std::string text(reinterpret_cast<const char *>(words.data() + at), n_bytes);
    at += (n_bytes + 3) / 4;
    return text;
}

static std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text,
                                         bool add_special) {
    int32_t n = -llama_tokenize(vocab, text.data(), text.size(), nullptr, 0, add_special, true);
    std::vector<llama_token> ids(n > 0 ? n : 0);
    if (n > 0) llama_tokenize(vocab, text.data(), text.size(), ids.data(), n, add_special, true);
    return ids;
}

static void put_bytes(FILE * out, const std::string & bytes) {
    int32_t n = (int32_t) bytes.size();
    put(out, &n, 4);
    put(out, bytes.data(), bytes.size());
    put(out, "\0\0\0", (4 - bytes.size() % 4) % 4);
}

static void tokenize_texts(const llama_vocab * vocab, FILE * out) {
    int32_t n_texts = next_word();
    for (int32_t t = 0; t < n_texts; t++) {
        std::vector<llama_token> ids = tokenize(vocab, next_text(), false);
        int32_t n = (int32_t) ids.size();
        put(out, &n, 4);
        put(out, ids.data(), 4 * ids.size());
    }
}

// The load check: llama-simple's greedy continuation (its tokenizing, with add_special; its
// sampler; its stop at end of generation; its pieces, special tokens printed).
static bool generate(llama_context * ctx, const llama_vocab * vocab,
                     std::vector<llama_token> next, int32_t n, std::string & text) {
    llama_memory_clear(llama_get_memory(ctx), true);
    llama_sampler * smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smpl, llama_sampler_init_greedy());
    bool ok = true;
    for (int32_t i = 0; ok && i < n; i++) {
        ok = llama_decode(ctx, llama_batch_get_one(next.data(), (int32_t) next.size())) == 0;
        llama_token id = ok ? llama_sampler_sample(smpl, ctx, -1) : 0;
        if (!ok || llama_vocab_is_eog(vocab, id)) break;
        char buf[256];
        int32_t k = llama_token_to_piece(vocab, id, buf, sizeof(buf), 0, true);
        ok = k >= 0;
        if (ok) text.append(buf, k);
        next.assign(1, id);
    }
    llama_sampler_free(smpl);
    return ok;
}

// The log-sum-exp of a row of logits, in double: float sums over 150k logits lose digits.
static double log_sum_exp(const float * logits, int32_t n_vocab) {
    double mx = logits[0];
    for (int32_t i = 1; i < n_vocab; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int32_t i = 0; i < n_vocab; i++) sum += std::exp(logits[i] - mx);
    return mx + std::log(sum);
}

struct Seq {
    std::vector<llama_token> tokens;
    std::vector<int32_t> pos, target;
    std::vector<double> lse;          // each scored row's log-sum-exp, once decoded
    std::vector<const float *> rows;  // ... and the row itself, read when the ids come
    std::vector<float> kept;          // the rows copied (n_pos x n_vocab), but for the last seq
};

static Seq read_seq(int32_t n_vocab) {
    Seq s;
    int32_t n = next_word();
    for (int32_t i = 0; i < n; i++) s.tokens.push_back(next_word());
    int32_t n_pos = next_word();
    for (int32_t p = 0; p < n_pos; p++) {
        s.pos.push_back(next_word());
        s.target.push_back(next_word());
    }
    for (llama_token t : s.tokens) if (t < 0 || t >= n_vocab) {
        fprintf(stderr, "fastft-score: token id %d outside the GGUF's vocabulary (%d)\n", t, n_vocab);
        exit(5);
    }
    return s;
}

// Every scored position's row kept with its log-sum-exp, on `n_threads` threads: each row one
// thread's loop, the same sums in the same order as on one thread, so the same floats; serially
// the rows took 0.3 s of 294 positions over Qwen's 151,936-token vocabulary (2-core CPU), while
// llama.cpp's threads idled. The logits' pointers are taken here first: llama_get_logits_ith
// synchronizes the context, which is not for several threads at once. A row is copied only when
// `copy`: the next sequence's decode overwrites the context's logits, but after the last one
// nothing does, so the gate's usual single example costs no copy (150 MB at 256 rows of Qwen).
static void keep_rows(llama_context * ctx, Seq & s, int32_t n_vocab, int32_t n_threads, bool copy) {
    size_t n = s.pos.size();
    s.rows.resize(n);
    for (size_t p = 0; p < n; p++) s.rows[p] = llama_get_logits_ith(ctx, s.pos[p]);  // batch indexes
    s.lse.resize(n);
    if (copy) s.kept.resize(n * (size_t) n_vocab);
    std::atomic<size_t> next{0};
    auto work = [&]() {
        for (size_t p; (p = next++) < n;) {
            s.lse[p] = log_sum_exp(s.rows[p], n_vocab);
            if (!copy) continue;
            float * row = s.kept.data() + p * n_vocab;
            std::memcpy(row, s.rows[p], sizeof(float) * n_vocab);
            s.rows[p] = row;
        }
    };
    std::vector<std::thread> helpers;
    for (int32_t t = 1; t < n_threads && (size_t) t < n; t++) helpers.emplace_back(work);
    work();
    for (std::thread & t : helpers) t.join();
}

static bool decode_seq(llama_context * ctx, Seq & s, int32_t n_vocab, int32_t n_threads, bool copy) {
    llama_memory_clear(llama_get_memory(ctx), true);
    int32_t n = (int32_t) s.tokens.size();
    llama_batch batch = llama_batch_init(n, 0, 1);
    for (int32_t i = 0; i < n; i++) {
        batch.token[i] = s.tokens[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = false;
    }
    for (int32_t p : s.pos) batch.logits[p] = true;   // logits only where a trained token follows
    batch.n_tokens = n;
    bool ok = llama_decode(ctx, batch) == 0;
    if (ok) keep_rows(ctx, s, n_vocab, n_threads, copy);
    llama_batch_free(batch);
    return ok;
}

// Each row's log-probabilities at its target and at the k ids read from stdin for it.
static void put_rows(const Seq & s, int32_t n_vocab, int32_t k, FILE * out) {
    std::vector<float> row(1 + k);
    for (size_t p = 0; p < s.pos.size(); p++) {
        const float * logits = s.rows[p];
        row[0] = (float) (logits[s.target[p]] - s.lse[p]);
        for (int32_t j = 0; j < k; j++) {
            int32_t id;
            if (fread(&id, 4, 1, stdin) != 1) { fprintf(stderr, "fastft-score: the ids end early\n"); exit(3); }
            if (id < 0 || id >= n_vocab) {
                fprintf(stderr, "fastft-score: id %d outside the GGUF's vocabulary (%d)\n", id, n_vocab);
                exit(5);
            }
            row[1 + j] = (float) (logits[id] - s.lse[p]);
        }
        put(out, row.data(), 4 * row.size());
    }
}

int main(int argc, char ** argv) {
    if (argc < 4 || !strcmp(argv[1], "--help")) {
        printf("usage: fastft-score MODEL.gguf REQUEST RESULT [THREADS]\n");
        return argc < 2 || !strcmp(argv[1], "--help") ? 0 : 1;
    }
    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    if (!read_request(argv[2]) || next_word() != FASTFT_MAGIC) {
        fprintf(stderr, "fastft-score: %s is not a request\n", argv[2]);
        return 2;
    }
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) { fprintf(stderr, "fastft-score: cannot load %s\n", argv[1]); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    int32_t n_vocab = llama_vocab_n_tokens(vocab);
    FILE * out = fopen(argv[3], "wb");
    if (!out) { fprintf(stderr, "fastft-score: cannot write %s\n", argv[3]); return 4; }
    tokenize_texts(vocab, out);
    int32_t n_generate = next_word();
    std::vector<llama_token> prompt = tokenize(vocab, next_text(), true);
    if (n_generate > 0 && prompt.empty()) { fprintf(stderr, "fastft-score: an empty prompt\n"); return 3; }
    int32_t n_seqs = next_word();
    std::vector<Seq> seqs;
    uint32_t longest = n_generate > 0 ? prompt.size() + n_generate : 1;
    for (int32_t i = 0; i < n_seqs; i++) {
        seqs.push_back(read_seq(n_vocab));
        longest = seqs.back().tokens.size() > longest ? seqs.back().tokens.size() : longest;
    }
    int32_t k = next_word();
    for (const Seq & s : seqs)
        for (int32_t t : s.target) if (t < 0 || t >= n_vocab) {
            fprintf(stderr, "fastft-score: target %d outside the GGUF's vocabulary (%d)\n", t, n_vocab);
            return 5;
        }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = longest;
    cp.n_ubatch = longest < 512 ? longest : 512;
    if (argc > 4) cp.n_threads = cp.n_threads_batch = atoi(argv[4]);
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "fastft-score: cannot create a context of %u\n", longest); return 1; }
    std::string text;
    auto t0 = std::chrono::steady_clock::now();
    if (n_generate > 0 && !generate(ctx, vocab, prompt, n_generate, text)) {
        fprintf(stderr, "fastft-score: generating from the prompt failed\n");
        return 1;
    }
    float seconds = std::chrono::duration<float>(std::chrono::steady_clock::now() - t0).count();
    put_bytes(out, text);
    put(out, &seconds, 4);
    for (Seq & s : seqs)
        if (!decode_seq(ctx, s, n_vocab, llama_n_threads(ctx), &s != &seqs.back())) {
            fprintf(stderr, "fastft-score: decode failed\n");
            return 1;
        }
    for (const Seq & s : seqs) put_rows(s, n_vocab, k, out);   // waits for the ids here
    if (fclose(out) != 0) { fprintf(stderr, "fastft-score: cannot write %s\n", argv[3]); return 4; }
    // Done: the OS takes the memory back at once, where freeing the context and the model (the
    // vocabulary's maps) took 0.1 s of the tiny model's 1.2 s.
    std::_Exit(0);
}
""".replace("FASTFT_MAGIC", f"{MAGIC:#x}")   # the one magic number, Python's and the program's
