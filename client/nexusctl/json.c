// SPDX-License-Identifier: Apache-2.0
//
// JSON <-> protobuf for nexusctl (see json.h). Trees built here are allocated with malloc, one
// node at a time, in the shape protobuf-c's own unpacker produces, so that
// protobuf_c_message_free_unpacked(msg, NULL) frees them whether they were built from JSON or
// unpacked from the wire. Conversions recurse, bounded by CTL_JSON_DEPTH_MAX; bytes from the
// broker are checked for their nesting depth on the wire before protobuf-c (which recurses
// without a bound) sees them.
#include "client/nexusctl/json.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "codec/wire.h"
#include "common.pb-c.h"
#include "google/protobuf/struct.pb-c.h"

typedef Google__Protobuf__Struct pb_struct;
typedef Google__Protobuf__Value pb_value;
typedef Google__Protobuf__ListValue pb_list;
typedef Google__Protobuf__Struct__FieldsEntry pb_entry;

/* Where an error is written: the caller's buffer and the path of the value being converted. */
struct jerr {
    char *buf;
    size_t cap;
};

static void __attribute__((format(printf, 2, 3))) jfail(struct jerr *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->buf, e->cap, fmt, ap);
    va_end(ap);
}

static const char *json_kind(const json_t *j)
{
    if (!j)
        return "nothing";
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

json_t *ctl_json_parse(const char *arg, const char *what, char *err, size_t err_cap)
{
    const size_t flags = JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_REJECT_DUPLICATES;
    json_error_t je;
    json_t *j;
    if (strcmp(arg, "-") == 0)
        j = json_loadf(stdin, flags, &je);
    else if (arg[0] == '@')
        j = json_load_file(arg + 1, flags, &je);
    else
        j = json_loads(arg, flags, &je);
    if (!j) {
        if (je.line > 0)
            snprintf(err, err_cap, "%s: invalid JSON at line %d column %d: %s", what, je.line,
                     je.column, je.text);
        else
            snprintf(err, err_cap, "%s: invalid JSON: %s", what, je.text);
    }
    return j;
}

json_t *ctl_json_parse_text(const char *text, size_t len)
{
    return json_loadb(text, len, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_REJECT_DUPLICATES,
                      NULL);
}

/* ---- JSON -> protobuf ------------------------------------------------------------------------ */

static pb_struct *struct_from_json(const json_t *obj, int depth, struct jerr *e);

static pb_value *value_from_json(const json_t *j, int depth, struct jerr *e);

static pb_list *list_from_json(const json_t *arr, int depth, struct jerr *e)
{
    pb_list *l = malloc(sizeof(*l));
    size_t n = json_array_size(arr);
    if (l) {
        google__protobuf__list_value__init(l);
        l->values = n ? calloc(n, sizeof(*l->values)) : NULL;
    }
    if (!l || (n && !l->values)) {
        free(l);
        jfail(e, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        pb_value *item = value_from_json(json_array_get(arr, i), depth, e);
        if (!item) {
            protobuf_c_message_free_unpacked(&l->base, NULL);
            return NULL;
        }
        l->values[l->n_values++] = item;
    }
    return l;
}

static pb_value *value_from_json(const json_t *j, int depth, struct jerr *e)
{
    if (depth > CTL_JSON_DEPTH_MAX) {
        jfail(e, "nested deeper than %d levels", CTL_JSON_DEPTH_MAX);
        return NULL;
    }
    pb_value *v = malloc(sizeof(*v));
    if (!v) {
        jfail(e, "out of memory");
        return NULL;
    }
    google__protobuf__value__init(v);
    /* kind_case is set only once the member is complete, so that a failure below leaves v
     * empty and a plain free() releases it. */
    switch (json_typeof(j)) {
    case JSON_NULL:
        v->null_value = GOOGLE__PROTOBUF__NULL_VALUE__NULL_VALUE;
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        v->bool_value = json_is_true(j);
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
        break;
    case JSON_INTEGER:
        v->number_value = (double)json_integer_value(j);
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
        break;
    case JSON_REAL:
        v->number_value = json_real_value(j);
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
        break;
    case JSON_STRING:
        /* jansson refuses \u0000 in input, so the C string is the whole value. */
        v->string_value = strdup(json_string_value(j));
        if (!v->string_value)
            goto oom;
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
        break;
    case JSON_OBJECT:
        v->struct_value = struct_from_json(j, depth + 1, e);
        if (!v->struct_value)
            goto fail;
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
        break;
    case JSON_ARRAY:
        v->list_value = list_from_json(j, depth + 1, e);
        if (!v->list_value)
            goto fail;
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
        break;
    }
    return v;
oom:
    jfail(e, "out of memory");
fail:
    free(v);
    return NULL;
}

static pb_struct *struct_from_json(const json_t *obj, int depth, struct jerr *e)
{
    if (depth > CTL_JSON_DEPTH_MAX) {
        jfail(e, "nested deeper than %d levels", CTL_JSON_DEPTH_MAX);
        return NULL;
    }
    pb_struct *s = malloc(sizeof(*s));
    if (!s) {
        jfail(e, "out of memory");
        return NULL;
    }
    google__protobuf__struct__init(s);
    size_t n = json_object_size(obj);
    s->fields = n ? calloc(n, sizeof(*s->fields)) : NULL;
    if (n && !s->fields) {
        free(s);
        jfail(e, "out of memory");
        return NULL;
    }
    const char *key;
    json_t *val;
    /* jansson iterates an object in insertion order, i.e. the order of the JSON text. */
    json_object_foreach((json_t *)obj, key, val)
    {
        pb_entry *en = malloc(sizeof(*en));
        if (!en) {
            jfail(e, "out of memory");
            goto fail;
        }
        google__protobuf__struct__fields_entry__init(en);
        en->key = strdup(key);
        en->value = en->key ? value_from_json(val, depth, e) : NULL;
        if (!en->value) {
            if (!en->key)
                jfail(e, "out of memory");
            free(en->key);
            free(en);
            goto fail;
        }
        s->fields[s->n_fields++] = en;
    }
    return s;
fail:
    protobuf_c_message_free_unpacked(&s->base, NULL);
    return NULL;
}

/* A Struct from an optional JSON object named `what` (for messages). */
static int struct_field(const json_t *j, const char *what, pb_struct **out, struct jerr *e)
{
    *out = NULL;
    if (!j)
        return 0;
    if (!json_is_object(j)) {
        jfail(e, "%s: expected a JSON object, got %s", what, json_kind(j));
        return -1;
    }
    char inner[256];
    struct jerr ie = {inner, sizeof(inner)};
    *out = struct_from_json(j, 1, &ie);
    if (!*out) {
        jfail(e, "%s: %s", what, inner);
        return -1;
    }
    return 0;
}

/* Packs msg into a malloc'd buffer. */
static int pack_message(const ProtobufCMessage *msg, uint8_t **out, size_t *len, struct jerr *e)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    *out = malloc(n ? n : 1);
    if (!*out) {
        jfail(e, "out of memory");
        return -1;
    }
    *len = protobuf_c_message_pack(msg, *out);
    return 0;
}

int ctl_payload_pack(const json_t *data, const json_t *versioning, uint8_t **out, size_t *len,
                     char *err, size_t err_cap)
{
    struct jerr e = {err, err_cap};
    Common__Payload p = COMMON__PAYLOAD__INIT;
    int r = -1;
    if (struct_field(data, "--data", &p.data, &e) < 0 ||
        struct_field(versioning, "--versioning", &p.versioning, &e) < 0)
        goto done;
    r = pack_message(&p.base, out, len, &e);
done:
    if (p.data)
        protobuf_c_message_free_unpacked(&p.data->base, NULL);
    if (p.versioning)
        protobuf_c_message_free_unpacked(&p.versioning->base, NULL);
    return r;
}

/* The Struct fields of Metadata, by JSON name, with their place in the message. */
struct md_struct_field {
    const char *name, *camel;
    size_t offset;
};
static const struct md_struct_field md_structs[] = {
    {"scheduling", "scheduling", offsetof(Common__Metadata, scheduling)},
    {"custom_rules", "customRules", offsetof(Common__Metadata, custom_rules)},
    {"audit", "audit", offsetof(Common__Metadata, audit)},
    {"service_specific", "serviceSpecific", offsetof(Common__Metadata, service_specific)},
    {"knowledge_graph", "knowledgeGraph", offsetof(Common__Metadata, knowledge_graph)},
};
#define MD_STRUCTS (sizeof(md_structs) / sizeof(md_structs[0]))

struct gc_field {
    const char *name, *camel;
    size_t offset;
};
static const struct gc_field gc_fields[] = {
    {"user_id", "userId", offsetof(Common__GlobalContext, user_id)},
    {"campaign_id", "campaignId", offsetof(Common__GlobalContext, campaign_id)},
    {"correlation_id", "correlationId", offsetof(Common__GlobalContext, correlation_id)},
    {"session_id", "sessionId", offsetof(Common__GlobalContext, session_id)},
    {"device_id", "deviceId", offsetof(Common__GlobalContext, device_id)},
    {"source", "source", offsetof(Common__GlobalContext, source)},
};
#define GC_FIELDS (sizeof(gc_fields) / sizeof(gc_fields[0]))

static bool name_is(const char *key, const char *name, const char *camel)
{
    return strcmp(key, name) == 0 || strcmp(key, camel) == 0;
}

/* Sets a string field of a message built here (always a malloc'd copy, never the shared empty
 * string, so that free_unpacked can free it). */
static int set_string(char **slot, const char *s, struct jerr *e)
{
    char *d = strdup(s);
    if (!d) {
        jfail(e, "out of memory");
        return -1;
    }
    if (*slot != protobuf_c_empty_string)
        free(*slot);
    *slot = d;
    return 0;
}

static int global_context_from_json(const json_t *j, Common__GlobalContext *gc, struct jerr *e)
{
    if (!json_is_object(j)) {
        jfail(e, "--metadata: global_context: expected a JSON object, got %s", json_kind(j));
        return -1;
    }
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)j, key, val)
    {
        size_t i = 0;
        while (i < GC_FIELDS && !name_is(key, gc_fields[i].name, gc_fields[i].camel))
            i++;
        if (i == GC_FIELDS) {
            jfail(e,
                  "--metadata: global_context: unknown field \"%s\" (known: user_id, "
                  "campaign_id, correlation_id, session_id, device_id, source)",
                  key);
            return -1;
        }
        if (!json_is_string(val)) {
            jfail(e, "--metadata: global_context.%s: expected a string, got %s", gc_fields[i].name,
                  json_kind(val));
            return -1;
        }
        if (set_string((char **)((char *)gc + gc_fields[i].offset), json_string_value(val), e) < 0)
            return -1;
    }
    return 0;
}

static int strings_from_json(const json_t *j, const char *what, size_t *n, char ***out,
                             struct jerr *e)
{
    if (!json_is_array(j)) {
        jfail(e, "--metadata: %s: expected an array of strings, got %s", what, json_kind(j));
        return -1;
    }
    size_t count = json_array_size(j);
    *out = count ? calloc(count, sizeof(**out)) : NULL;
    if (count && !*out) {
        jfail(e, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        json_t *s = json_array_get(j, i);
        if (!json_is_string(s)) {
            jfail(e, "--metadata: %s[%zu]: expected a string, got %s", what, i, json_kind(s));
            return -1;
        }
        (*out)[i] = strdup(json_string_value(s));
        if (!(*out)[i]) {
            jfail(e, "out of memory");
            return -1;
        }
        *n = i + 1;
    }
    return 0;
}

/* Fills the Metadata message m (whose strings and sub-messages are malloc'd) from md. */
static int metadata_from_json(const json_t *md, Common__Metadata *m, struct jerr *e)
{
    if (!json_is_object(md)) {
        jfail(e, "--metadata: expected a JSON object, got %s", json_kind(md));
        return -1;
    }
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)md, key, val)
    {
        if (name_is(key, "global_context", "globalContext")) {
            if (!m->global_context) {
                m->global_context = malloc(sizeof(*m->global_context));
                if (!m->global_context) {
                    jfail(e, "out of memory");
                    return -1;
                }
                common__global_context__init(m->global_context);
            }
            if (global_context_from_json(val, m->global_context, e) < 0)
                return -1;
            continue;
        }
        if (strcmp(key, "tags") == 0) {
            if (strings_from_json(val, "tags", &m->n_tags, &m->tags, e) < 0)
                return -1;
            continue;
        }
        if (strcmp(key, "features") == 0) {
            if (strings_from_json(val, "features", &m->n_features, &m->features, e) < 0)
                return -1;
            continue;
        }
        size_t i = 0;
        while (i < MD_STRUCTS && !name_is(key, md_structs[i].name, md_structs[i].camel))
            i++;
        if (i == MD_STRUCTS) {
            jfail(e,
                  "--metadata: unknown field \"%s\" (known: global_context, features, tags, "
                  "scheduling, custom_rules, audit, service_specific, knowledge_graph)",
                  key);
            return -1;
        }
        char what[64];
        snprintf(what, sizeof(what), "--metadata: %s", md_structs[i].name);
        pb_struct **slot = (pb_struct **)((char *)m + md_structs[i].offset);
        if (struct_field(val, what, slot, e) < 0)
            return -1;
    }
    return 0;
}

int ctl_metadata_pack(const json_t *md, const char *user_id, const char *correlation_id,
                      uint8_t **out, size_t *len, char *err, size_t err_cap)
{
    struct jerr e = {err, err_cap};
    *out = NULL;
    *len = 0;
    if (!md && !user_id && !correlation_id)
        return 0;
    Common__Metadata *m = malloc(sizeof(*m));
    if (!m) {
        jfail(&e, "out of memory");
        return -1;
    }
    common__metadata__init(m);
    int r = -1;
    if (md && metadata_from_json(md, m, &e) < 0)
        goto done;
    if ((user_id || correlation_id) && !m->global_context) {
        m->global_context = malloc(sizeof(*m->global_context));
        if (!m->global_context) {
            jfail(&e, "out of memory");
            goto done;
        }
        common__global_context__init(m->global_context);
    }
    if (user_id && set_string(&m->global_context->user_id, user_id, &e) < 0)
        goto done;
    if (correlation_id && set_string(&m->global_context->correlation_id, correlation_id, &e) < 0)
        goto done;
    r = pack_message(&m->base, out, len, &e);
done:
    protobuf_c_message_free_unpacked(&m->base, NULL);
    return r;
}

/* ---- protobuf -> JSON ------------------------------------------------------------------------ */

/* Message shapes the depth check knows: which length-delimited fields are sub-messages. */
enum shape { SH_PAYLOAD, SH_METADATA, SH_STRUCT, SH_ENTRY, SH_VALUE, SH_LIST };

/* Each JSON level is three protobuf levels (Struct, entry, Value). */
#define WIRE_DEPTH_MAX (3 * CTL_JSON_DEPTH_MAX + 8)

static int child_shape(enum shape sh, uint32_t field)
{
    switch (sh) {
    case SH_PAYLOAD:
        return field == 1 || field == 2 ? SH_STRUCT : -1;
    case SH_METADATA:
        return field == 1 || field == 3 || field == 4 || field == 6 || field == 7 ? SH_STRUCT : -1;
    case SH_STRUCT:
        return field == 1 ? SH_ENTRY : -1;
    case SH_ENTRY:
        return field == 2 ? SH_VALUE : -1;
    case SH_VALUE:
        return field == 5 ? SH_STRUCT : field == 6 ? SH_LIST : -1;
    case SH_LIST:
        return field == 1 ? SH_VALUE : -1;
    }
    return -1;
}

/* True when buf is well-formed protobuf down to its Struct leaves and nests at most
 * WIRE_DEPTH_MAX messages deep, so that protobuf-c's recursive unpacker is safe on it. */
static bool wire_shape_ok(const uint8_t *buf, size_t len, enum shape sh, int depth)
{
    if (depth > WIRE_DEPTH_MAX)
        return false;
    struct wire_cursor c;
    struct wire_field f;
    int r;
    wire_cursor_init(&c, buf, len);
    while ((r = wire_next(&c, &f)) == 1) {
        int child = f.type == WIRE_LEN ? child_shape(sh, f.number) : -1;
        if (child >= 0 && !wire_shape_ok(f.data, f.len, (enum shape)child, depth + 1))
            return false;
    }
    return r == 0;
}

static json_t *struct_to_json(const pb_struct *s, int depth);

/* A JSON string from protobuf string bytes, which the sender may not have kept to UTF-8:
 * invalid bytes become U+FFFD so that the output is always valid JSON. */
static json_t *string_to_json(const char *s)
{
    size_t n = strlen(s);
    if (wire_utf8_valid((const uint8_t *)s, n))
        return json_stringn(s, n);
    char *fixed = malloc(n * 3 + 1);
    if (!fixed)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = 1;
        while (k <= 4 && i + k <= n && !wire_utf8_valid((const uint8_t *)s + i, k))
            k++;
        if (k <= 4 && i + k <= n) {
            memcpy(fixed + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(fixed + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    json_t *j = json_stringn(fixed, o);
    free(fixed);
    return j;
}

static json_t *value_to_json(const pb_value *v, int depth)
{
    if (depth > CTL_JSON_DEPTH_MAX)
        return NULL;
    switch (v->kind_case) {
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE: {
        double x = v->number_value;
        if (isnan(x))
            return json_string("NaN");
        if (isinf(x))
            return json_string(x > 0 ? "Infinity" : "-Infinity");
        return json_real(x);
    }
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        return string_to_json(v->string_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE:
        return json_boolean(v->bool_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        return struct_to_json(v->struct_value, depth + 1);
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE: {
        json_t *a = json_array();
        for (size_t i = 0; a && i < v->list_value->n_values; i++) {
            json_t *item = value_to_json(v->list_value->values[i], depth + 1);
            if (!item || json_array_append_new(a, item) < 0) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    default: /* null, or a Value with no kind set (protobuf's JSON printer says null too) */
        return json_null();
    }
}

static json_t *struct_to_json(const pb_struct *s, int depth)
{
    if (depth > CTL_JSON_DEPTH_MAX)
        return NULL;
    json_t *o = json_object();
    for (size_t i = 0; o && i < s->n_fields; i++) {
        const pb_entry *en = s->fields[i];
        json_t *v = en->value ? value_to_json(en->value, depth) : json_null();
        /* A repeated key (legal on the wire, as for any protobuf map) keeps the last value. */
        if (!v || json_object_set_new(o, en->key, v) < 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

static json_t *base64_json(const uint8_t *buf, size_t len, const char *why)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *s = malloc((len + 2) / 3 * 4 + 1);
    if (!s)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)buf[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)buf[i + 1] << 8;
        if (i + 2 < len)
            v |= buf[i + 2];
        s[o++] = tab[(v >> 18) & 63];
        s[o++] = tab[(v >> 12) & 63];
        s[o++] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        s[o++] = i + 2 < len ? tab[v & 63] : '=';
    }
    s[o] = 0;
    json_t *j = json_pack("{s:s, s:s}", "undecodable", why, "base64", s);
    free(s);
    return j;
}

json_t *ctl_payload_to_json(const uint8_t *buf, size_t len)
{
    if (!wire_shape_ok(buf, len, SH_PAYLOAD, 0))
        return base64_json(buf, len, "not a well-formed common.Payload (or nested too deeply)");
    Common__Payload *p = common__payload__unpack(NULL, len, buf);
    if (!p)
        return base64_json(buf, len, "not a well-formed common.Payload (or nested too deeply)");
    json_t *o = json_object();
    json_t *d = p->data ? struct_to_json(p->data, 1) : NULL;
    json_t *v = p->versioning ? struct_to_json(p->versioning, 1) : NULL;
    bool bad = (p->data && !d) || (p->versioning && !v);
    if (o && d)
        json_object_set_new(o, "data", d);
    else
        json_decref(d);
    if (o && v)
        json_object_set_new(o, "versioning", v);
    else
        json_decref(v);
    common__payload__free_unpacked(p, NULL);
    if (bad) {
        json_decref(o);
        return base64_json(buf, len, "payload nests too deeply");
    }
    return o;
}

static int add_strings(json_t *o, const char *key, size_t n, char **v)
{
    if (n == 0)
        return 0;
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        if (json_array_append_new(a, string_to_json(v[i])) < 0) {
            json_decref(a);
            return -1;
        }
    return a ? json_object_set_new(o, key, a) : -1;
}

json_t *ctl_metadata_to_json(const uint8_t *buf, size_t len)
{
    if (!wire_shape_ok(buf, len, SH_METADATA, 0))
        return base64_json(buf, len, "not a well-formed common.Metadata (or nested too deeply)");
    Common__Metadata *m = common__metadata__unpack(NULL, len, buf);
    if (!m)
        return base64_json(buf, len, "not a well-formed common.Metadata (or nested too deeply)");
    json_t *o = json_object();
    bool bad = !o;
    if (o && m->global_context) {
        json_t *gc = json_object();
        for (size_t i = 0; gc && i < GC_FIELDS; i++) {
            const char *s = *(char **)((char *)m->global_context + gc_fields[i].offset);
            if (s && *s)
                json_object_set_new(gc, gc_fields[i].name, string_to_json(s));
        }
        bad |= !gc || json_object_set_new(o, "global_context", gc) < 0;
    }
    if (o) {
        bad |= add_strings(o, "features", m->n_features, m->features) < 0;
        bad |= add_strings(o, "tags", m->n_tags, m->tags) < 0;
    }
    for (size_t i = 0; o && i < MD_STRUCTS; i++) {
        const pb_struct *s = *(pb_struct **)((char *)m + md_structs[i].offset);
        if (!s)
            continue;
        json_t *j = struct_to_json(s, 1);
        bad |= !j || json_object_set_new(o, md_structs[i].name, j) < 0;
    }
    common__metadata__free_unpacked(m, NULL);
    if (bad) {
        json_decref(o);
        return base64_json(buf, len, "metadata nests too deeply");
    }
    return o;
}

/* ---- printing -------------------------------------------------------------------------------- */

/* The shortest decimal form of x that reads back as x (jansson prints 17 digits: 0.1 would
 * come out as 0.10000000000000001). Integral values within 2^53 print as integers. */
static void put_double(FILE *f, double x)
{
    if (x == 0 && signbit(x)) {
        fputs("-0.0", f);
        return;
    }
    /* (No floor()/fabs(): nexusctl links without libm.) */
    if (x > -9007199254740992.0 && x < 9007199254740992.0 && x == (double)(int64_t)x) {
        fprintf(f, "%" PRId64, (int64_t)x);
        return;
    }
    char s[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(s, sizeof(s), "%.*g", prec, x);
        if (strtod(s, NULL) == x)
            break;
    }
    fputs(s, f);
}

static void put_string(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        switch (ch) {
        case '"':
            fputs("\\\"", f);
            break;
        case '\\':
            fputs("\\\\", f);
            break;
        case '\n':
            fputs("\\n", f);
            break;
        case '\r':
            fputs("\\r", f);
            break;
        case '\t':
            fputs("\\t", f);
            break;
        default:
            if (ch < 0x20)
                fprintf(f, "\\u%04x", ch);
            else
                fputc(ch, f);
        }
    }
    fputc('"', f);
}

static void put_indent(FILE *f, bool pretty, int level)
{
    if (!pretty)
        return;
    fputc('\n', f);
    for (int i = 0; i < level; i++)
        fputs("  ", f);
}

static void put_json(FILE *f, const json_t *j, bool pretty, int level)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *v;
        bool first = true;
        fputc('{', f);
        json_object_foreach((json_t *)j, key, v)
        {
            if (!first)
                fputc(',', f);
            first = false;
            put_indent(f, pretty, level + 1);
            put_string(f, key, strlen(key));
            fputs(pretty ? ": " : ":", f);
            put_json(f, v, pretty, level + 1);
        }
        if (!first)
            put_indent(f, pretty, level);
        fputc('}', f);
        break;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        fputc('[', f);
        for (size_t i = 0; i < n; i++) {
            if (i)
                fputc(',', f);
            put_indent(f, pretty, level + 1);
            put_json(f, json_array_get(j, i), pretty, level + 1);
        }
        if (n)
            put_indent(f, pretty, level);
        fputc(']', f);
        break;
    }
    case JSON_STRING:
        put_string(f, json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER:
        fprintf(f, "%" JSON_INTEGER_FORMAT, json_integer_value(j));
        break;
    case JSON_REAL:
        put_double(f, json_real_value(j));
        break;
    case JSON_TRUE:
        fputs("true", f);
        break;
    case JSON_FALSE:
        fputs("false", f);
        break;
    case JSON_NULL:
        fputs("null", f);
        break;
    }
}

void ctl_json_write(FILE *f, const json_t *j)
{
    put_json(f, j, false, 0);
}

int ctl_json_print(FILE *f, const json_t *j, bool pretty)
{
    errno = 0;
    put_json(f, j, pretty, 0);
    fputc('\n', f);
    if (fflush(f) != 0 || ferror(f)) {
        int e = errno ? errno : EIO;
        clearerr(f);
        return -e;
    }
    return 0;
}
