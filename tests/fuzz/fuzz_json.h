/* fuzz_json.h — helpers shared by the fuzz targets that compare JSON trees.
 *
 * Why not json_equal(): jansson 2.14 looks object keys up as C strings, so two
 * equal objects whose keys hold a NUL byte ("\u0000", which our parsers keep
 * on purpose) compare unequal, and even a tree compared with its own copy
 * fails.  The fuzzers reach such keys within seconds.
 */
#ifndef CELERIAC_FUZZ_JSON_H
#define CELERIAC_FUZZ_JSON_H

#include <jansson.h>

/* json_equal() with keys compared by length: jansson's own looks keys up as
 * C strings, so two equal objects whose key holds a NUL compare unequal. */
static inline int fuzz_json_same(const json_t *a, const json_t *b)
{
    if (json_typeof(a) != json_typeof(b))
        return 0;
    if (json_is_object(a)) {
        const char *k;
        size_t klen;
        json_t *x;
        if (json_object_size(a) != json_object_size(b))
            return 0;
        json_object_keylen_foreach((json_t *)a, k, klen, x) {
            const json_t *y = json_object_getn(b, k, klen);
            if (!y || !fuzz_json_same(x, y))
                return 0;
        }
        return 1;
    }
    if (json_is_array(a)) {
        if (json_array_size(a) != json_array_size(b))
            return 0;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!fuzz_json_same(json_array_get(a, i), json_array_get(b, i)))
                return 0;
        return 1;
    }
    return json_equal(a, b);
}

#endif
