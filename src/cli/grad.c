/* `dsv4 grad` (a fixed contract): the mean next-token cross-entropy of the main head over a token
 * sequence and its gradient for every floating-point parameter tensor, saved as F32 safetensors
 * under the checkpoint's names; the last line printed is `loss <value>`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *HELP =
    "usage: dsv4 grad -m DIR --tokens FILE --out OUT.safetensors\n"
    "  Mean next-token cross-entropy of the main head over the ids in FILE (no MTP, no auxiliary\n"
    "  losses, indexer in inference mode) and its gradient for every floating-point parameter,\n"
    "  as F32 tensors under the checkpoint's names (zeros where no gradient flows; quantisation\n"
    "  scales and integer tables omitted; quantised weights get the gradient of their dequantised\n"
    "  values). Prints `loss <value>` last.\n"
    "  --mtp-weight X   add X times the MTP block's cross-entropy (token i+2 from position i) to the loss\n"
    "  --indexer-weight X  add X times the lightning indexer's KL loss (V3.2 recipe; its inputs detached,\n"
    "                   so only the indexer's parameters get its gradient); prints `indexer_kl <value>`\n"
    "  --indexer-dense  the dense warm-up stage: every visible compressed entry is attended (and enters\n"
    "                   the KL), as if index_topk were unbounded\n";

int cmd_grad(int argc, char **argv) {
    const char *dir = NULL, *tokf = NULL, *out = NULL;
    double mtp_weight = 0, indexer_weight = 0;
    int indexer_dense = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(HELP, stdout); return 0; }
        else if (!strcmp(a, "--indexer-dense")) indexer_dense = 1;
        else if (i + 1 >= argc) return cli_error("grad", "option %s needs a value (see --help)", a);
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) dir = argv[++i];
        else if (!strcmp(a, "--tokens")) tokf = argv[++i];
        else if (!strcmp(a, "--out")) out = argv[++i];
        else if (!strcmp(a, "--mtp-weight") || !strcmp(a, "--indexer-weight")) {
            char *end;
            const double x = strtod(argv[++i], &end);
            if (*end || !(x >= 0) || x > 1e6) return cli_error("grad", "%s needs a non-negative number", a);
            if (!strcmp(a, "--mtp-weight")) mtp_weight = x; else indexer_weight = x;
        }
        else return cli_error("grad", "unknown option '%s' (see --help)", a);
    }
    if (!dir || !tokf || !out) return cli_error("grad", "needs -m DIR --tokens FILE --out OUT.safetensors (see --help)");
    int64_t N;
    int32_t *ids = read_token_file(tokf, &N);
    if (!ids) return cli_error("grad", "%s", dsv4_last_error());
    dsv4_open_options o = {.quant_rounding = 0};
    dsv4_model *m = dsv4_model_open(dir, &o);
    if (!m) { free(ids); return cli_error("grad", "%s", dsv4_last_error()); }
    double loss = 0, kl = 0;
    LossOpts lo = {.mtp_weight = mtp_weight, .indexer_weight = indexer_weight, .indexer_dense = indexer_dense};
    Grads *G = model_grad(m, ids, N, &lo, &loss);
    int rc = 0;
    if (!G) rc = cli_error("grad", "%s: %s", tokf, dsv4_last_error());
    else {
        StWriter w = {0};
        for (int64_t i = 0; i < m->st.n_tensors; i++) {
            const StTensor *t = &m->st.tensors[i];
            const size_t ln = strlen(t->name);
            const int is_scale = ln > 6 && !strcmp(t->name + ln - 6, ".scale") && (t->dtype == DT_F8_E8M0 || t->dtype == DT_F32);
            const int is_float = t->dtype == DT_F32 || t->dtype == DT_BF16 || t->dtype == DT_F16 || t->dtype == DT_F8_E4M3 || t->dtype == DT_I8;
            if (is_scale || !is_float || strstr(t->name, "tid2eid")) continue;
            int64_t shape[4], numel = 1;
            for (int k = 0; k < t->ndim && k < 4; k++) shape[k] = t->shape[k];
            if (t->dtype == DT_I8) shape[t->ndim - 1] *= 2;   /* FP4: two values per byte */
            for (int k = 0; k < t->ndim; k++) numel *= shape[k];
            float *g = xcalloc((size_t)(numel ? numel : 1), sizeof(float));
            int64_t have = 0;
            const float *src = grads_find(G, t->name, &have);
            if (src && have == numel) memcpy(g, src, sizeof(float) * (size_t)numel);
            st_writer_add(&w, t->name, DT_F32, t->ndim, shape, g);
        }
        if (st_writer_save(&w, out, 0)) rc = cli_error("grad", "%s", dsv4_last_error());
        st_writer_free(&w);
        kl = grads_indexer_kl(G);
        grads_free(G);
    }
    if (rc == 0 && indexer_weight > 0) printf("indexer_kl %.9g\n", kl);
    if (rc == 0) printf("loss %.9g\n", loss);
    free(ids);
    dsv4_model_close(m);
    return rc;
}
