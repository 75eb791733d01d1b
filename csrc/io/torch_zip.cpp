// torch.save's zip format (PyTorch >= 1.6): a stored (uncompressed) zip archive holding
// `<folder>/data.pkl`, a protocol-2 pickle of the state dict, and one record
// `<folder>/data/<key>` per storage. We index the zip, then run a restricted unpickler that
// knows only the opcodes and globals a state dict needs. Nothing from the pickle is ever
// executed, and tensor bytes are never copied: records point into the caller's mapping.
//
// ATen-free on purpose (fuzzed on its own). libtorch 1.13's pickle_load cannot read
// OrderedDict state dicts, which is why this exists at all.
#include <algorithm>
#include <cstring>
#include <deque>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "io/checkpoint.h"

namespace wan::io {
namespace {

using core::DType;

// Limits against hostile input. Real Wan2.1 checkpoints are far below each of them.
constexpr size_t kMaxStack = 1u << 20;        // pickle stack depth
constexpr size_t kMaxMarks = 1u << 16;        // open MARKs
constexpr uint64_t kMaxMemo = 1u << 24;       // memo index
constexpr size_t kMaxGlobalName = 256;        // GLOBAL module / name line
constexpr size_t kMaxDims = 64;               // tensor rank
constexpr int kMaxDepth = 64;                 // nested dicts when flattening
constexpr size_t kMaxObjects = 1u << 21;      // Python values built
constexpr size_t kMaxVisits = 1u << 20;       // dict entries visited (shared dicts can fan out)
constexpr size_t kMaxTensors = 1u << 16;      // records returned (Wan2.1 14B has ~1,100)
constexpr size_t kMaxNameBytes = 1u << 16;    // one flattened tensor name
constexpr size_t kMaxTotalNameBytes = 1u << 24;
constexpr size_t kEocdSize = 22, kCentralSize = 46, kLocalSize = 30;

[[noreturn]] void fail(const std::string& file, const std::string& what) {
  throw core::bad_checkpoint(file, what);
}

uint64_t read_le(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Quotes text from the file for a message: non-printable bytes escaped, long text cut.
std::string quoted(const std::string& s) {
  static const char kHex[] = "0123456789abcdef";
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < 120; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out + (s.size() > 120 ? "...'" : "'");
}

// ---------------------------------------------------------------------------------------
// Zip

struct ZipEntry {
  uint64_t local_offset = 0, compressed = 0, size = 0;
  uint16_t method = 0, flags = 0;
};

struct Span {
  uint64_t offset = 0, size = 0;
};

class Archive {
 public:
  Archive(const uint8_t* data, size_t size, const std::string& file)
      : data_(data), size_(size), file_(file) {
    index();
  }

  const std::vector<std::string>& names() const { return names_; }
  bool has(const std::string& name) const { return entries_.count(name) != 0; }

  // Where a stored entry's bytes lie. The offset comes from the LOCAL header, whose extra
  // field may differ from the central one (torch pads it to align records to 64 bytes).
  Span locate(const std::string& name) const {
    const auto it = entries_.find(name);
    if (it == entries_.end()) fail(file_, "archive has no entry " + quoted(name));
    const ZipEntry& e = it->second;
    const std::string what = "zip entry " + quoted(name);
    if (e.flags & 1) fail(file_, what + " is encrypted");
    if (e.method != 0)
      fail(file_, what + " is compressed (method " + std::to_string(e.method) +
                      "); only stored entries, as torch.save writes them, can be mapped");
    if (e.compressed != e.size)
      fail(file_, what + " is stored but its compressed and plain sizes differ");
    if (e.local_offset > size_ || size_ - e.local_offset < kLocalSize)
      fail(file_, what + ": local header lies past the end of the file (truncated?)");
    const uint8_t* p = data_ + e.local_offset;
    if (read_le(p, 4) != 0x04034b50) fail(file_, what + ": bad local header signature");
    if (read_le(p + 8, 2) != 0)
      fail(file_, what + ": local header says compressed, central directory says stored");
    const uint64_t name_len = read_le(p + 26, 2), extra_len = read_le(p + 28, 2);
    // No overflow: local_offset <= size_ and the rest is below 2^18.
    const uint64_t begin = e.local_offset + kLocalSize + name_len + extra_len;
    if (begin > size_ || size_ - begin < e.size)
      fail(file_, what + ": data runs past the end of the file (truncated?)");
    if (name_len != name.size() || std::memcmp(p + kLocalSize, name.data(), name.size()) != 0)
      fail(file_, what + ": local header names a different entry");
    return {begin, e.size};
  }

 private:
  void index() {
    if (size_ < kEocdSize) fail(file_, "too small to be a zip archive");
    // The end record sits in the last 22 + 65535 (max comment) bytes; take the last one
    // whose comment fits in the file.
    const size_t lowest = size_ - kEocdSize > 0xffff ? size_ - kEocdSize - 0xffff : 0;
    size_t eocd = SIZE_MAX;
    for (size_t pos = size_ - kEocdSize + 1; pos-- > lowest;) {
      if (read_le(data_ + pos, 4) == 0x06054b50 &&
          pos + kEocdSize + read_le(data_ + pos + 20, 2) <= size_) {
        eocd = pos;
        break;
      }
    }
    if (eocd == SIZE_MAX) fail(file_, "no zip end-of-central-directory record found");
    uint64_t count = read_le(data_ + eocd + 10, 2);
    uint64_t cd_size = read_le(data_ + eocd + 12, 4);
    uint64_t cd_offset = read_le(data_ + eocd + 16, 4);
    // zip64: a 20-byte locator right before the end record points at the zip64 end record,
    // whose 64-bit fields replace the saturated 16/32-bit ones.
    if (eocd >= 20 && read_le(data_ + eocd - 20, 4) == 0x07064b50) {
      const uint64_t rec = read_le(data_ + eocd - 20 + 8, 8);
      if (rec > size_ || size_ - rec < 56 || read_le(data_ + rec, 4) != 0x06064b50)
        fail(file_, "zip64 end-of-central-directory locator points at no zip64 record");
      count = read_le(data_ + rec + 32, 8);
      cd_size = read_le(data_ + rec + 40, 8);
      cd_offset = read_le(data_ + rec + 48, 8);
    }
    if (cd_offset > size_ || size_ - cd_offset < cd_size)
      fail(file_, "zip central directory lies outside the file (truncated?)");
    // Each entry needs >= 46 bytes inside cd_size, so this loop is bounded by the file size.
    uint64_t pos = cd_offset;
    const uint64_t end = cd_offset + cd_size;
    for (uint64_t i = 0; i < count; ++i) {
      const std::string what = "zip central directory entry " + std::to_string(i);
      if (end - pos < kCentralSize) fail(file_, what + " runs past the directory");
      const uint8_t* p = data_ + pos;
      if (read_le(p, 4) != 0x02014b50) fail(file_, what + ": bad signature");
      ZipEntry e;
      e.flags = static_cast<uint16_t>(read_le(p + 8, 2));
      e.method = static_cast<uint16_t>(read_le(p + 10, 2));
      e.compressed = read_le(p + 20, 4);
      e.size = read_le(p + 24, 4);
      e.local_offset = read_le(p + 42, 4);
      const uint64_t name_len = read_le(p + 28, 2), extra_len = read_le(p + 30, 2);
      const uint64_t comment_len = read_le(p + 32, 2);
      if (end - pos - kCentralSize < name_len + extra_len + comment_len)
        fail(file_, what + " runs past the directory");
      std::string name(reinterpret_cast<const char*>(p + kCentralSize), name_len);
      read_zip64_extra(p + kCentralSize + name_len, extra_len, name, &e);
      if (!entries_.emplace(name, e).second)
        fail(file_, "zip entry " + quoted(name) + " appears twice");
      names_.push_back(std::move(name));
      pos += kCentralSize + name_len + extra_len + comment_len;
    }
  }

  // Zip64 extra field (id 1): 8-byte values, present only for the 32-bit fields saturated
  // at 0xFFFFFFFF, in the order size, compressed size, local header offset.
  void read_zip64_extra(const uint8_t* p, uint64_t len, const std::string& name, ZipEntry* e) {
    while (len >= 4) {
      const uint64_t id = read_le(p, 2), field_len = read_le(p + 2, 2);
      if (field_len > len - 4) fail(file_, "zip entry " + quoted(name) + ": bad extra field");
      if (id == 1) {
        const uint8_t* q = p + 4;
        uint64_t left = field_len;
        for (uint64_t* v : {&e->size, &e->compressed, &e->local_offset}) {
          if (*v != 0xffffffffu) continue;
          if (left < 8) fail(file_, "zip entry " + quoted(name) + ": zip64 field too short");
          *v = read_le(q, 8);
          q += 8;
          left -= 8;
        }
      }
      p += 4 + field_len;
      len -= 4 + field_len;
    }
  }

  const uint8_t* data_;
  size_t size_;
  const std::string& file_;
  std::unordered_map<std::string, ZipEntry> entries_;
  std::vector<std::string> names_;  // central directory order, for stable messages
};

// ---------------------------------------------------------------------------------------
// Pickle values

enum class Kind : uint8_t { None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict, Global,
                            Storage, Tensor };

// With its article, for messages: "REDUCE on an int".
const char* kind_name(Kind k) {
  static const char* const kNames[] = {"None",    "a bool",   "an int",   "a float",
                                       "a str",   "a bytes",  "a tuple",  "a list",
                                       "a dict",  "a global", "a storage", "a tensor"};
  return kNames[static_cast<int>(k)];
}

enum class Callable : uint8_t { OrderedDict, RebuildTensor, RebuildParameter,
                                RebuildParameterWithState, StorageClass };

// One Python value. Objects live in the unpickler's arena and refer to each other by raw
// pointer, so shared and even cyclic structures (BINGET of a dict into itself) cost nothing
// and leak nothing.
struct Object {
  Kind kind = Kind::None;
  Callable callable{};          // Global
  DType dtype = DType::U8;      // Global (StorageClass), Storage
  int64_t i = 0;                // Bool, Int; Tensor: storage offset in elements
  double f = 0;                 // Float
  std::string s;                // Str, Bytes; Storage: its key
  std::vector<Object*> items;   // Tuple, List; Dict: key, value, key, value...
  Span span;                    // Storage: the record's bytes in the file
  uint64_t numel = 0;           // Storage: elements, as torch.save declares them
  // Tensor: its storage and its size and stride tuples (checked to hold ints, same length).
  // Pointing at the tuples rather than copying them keeps a pickle that rebuilds one
  // memoized 64-dim tensor a million times from costing gigabytes.
  const Object* storage = nullptr;
  const Object* size = nullptr;
  const Object* stride = nullptr;
};

struct StorageName {
  const char* name;
  DType dtype;
};

// torch.<X>Storage as torch.save names a typed storage (1.x and 2.x alike).
constexpr StorageName kStorages[] = {
    {"DoubleStorage", DType::F64},   {"FloatStorage", DType::F32},
    {"HalfStorage", DType::F16},     {"BFloat16Storage", DType::BF16},
    {"Float8_e4m3fnStorage", DType::F8_E4M3FN}, {"Float8_e5m2Storage", DType::F8_E5M2},
    {"LongStorage", DType::I64},     {"IntStorage", DType::I32},
    {"ShortStorage", DType::I16},    {"CharStorage", DType::I8},
    {"ByteStorage", DType::U8},      {"BoolStorage", DType::Bool},
};

// ---------------------------------------------------------------------------------------
// Unpickler

class Unpickler {
 public:
  Unpickler(const uint8_t* data, Span pkl, const std::string& pkl_name, const std::string& prefix,
            const Archive& archive, const std::string& file)
      : p_(data + pkl.offset), n_(pkl.size), pkl_name_(pkl_name), prefix_(prefix),
        archive_(archive), file_(file) {}

  Object* run() {
    while (pos_ < n_) {
      op_pos_ = pos_;
      const uint8_t op = p_[pos_++];
      switch (op) {
        case 0x80: take(1); break;                         // PROTO
        case 0x95: take(8); break;                         // FRAME: framing is irrelevant here
        case 'c': {                                        // GLOBAL
          const std::string module = line();
          push(global(module, line()));
          break;
        }
        case 0x93: {                                       // STACK_GLOBAL
          Object* name = pop();
          Object* module = pop();
          if (module->kind != Kind::Str || name->kind != Kind::Str)
            error("STACK_GLOBAL expects two strings");
          push(global(module->s, name->s));
          break;
        }
        case 'q': memo_put(uint_arg(1)); break;            // BINPUT
        case 'r': memo_put(uint_arg(4)); break;            // LONG_BINPUT
        case 0x94: memo_put(memo_.size()); break;          // MEMOIZE
        case 'h': push(memo_get(uint_arg(1))); break;      // BINGET
        case 'j': push(memo_get(uint_arg(4))); break;      // LONG_BINGET
        case '(':                                          // MARK
          if (marks_.size() >= kMaxMarks) error("too many open MARKs");
          marks_.push_back(stack_.size());
          break;
        case '}': push(make(Kind::Dict)); break;           // EMPTY_DICT
        case ']': push(make(Kind::List)); break;           // EMPTY_LIST
        case ')': push(make(Kind::Tuple)); break;          // EMPTY_TUPLE
        case 't': push(tuple(pop_mark())); break;          // TUPLE
        case 0x85: case 0x86: case 0x87: {                 // TUPLE1, TUPLE2, TUPLE3
          std::vector<Object*> items(op - 0x84);
          for (size_t k = items.size(); k-- > 0;) items[k] = pop();
          push(tuple(std::move(items)));
          break;
        }
        case 's': {                                        // SETITEM
          Object* value = pop();
          Object* key = pop();
          auto& dict = container(Kind::Dict, "SETITEM")->items;
          dict.push_back(key);
          dict.push_back(value);
          break;
        }
        case 'u': {                                        // SETITEMS
          std::vector<Object*> items = pop_mark();
          if (items.size() % 2) error("SETITEMS with an odd number of items");
          auto& dict = container(Kind::Dict, "SETITEMS")->items;
          dict.insert(dict.end(), items.begin(), items.end());
          break;
        }
        case 'a': {                                        // APPEND
          Object* value = pop();
          container(Kind::List, "APPEND")->items.push_back(value);
          break;
        }
        case 'e': {                                        // APPENDS
          std::vector<Object*> items = pop_mark();
          auto& list = container(Kind::List, "APPENDS")->items;
          list.insert(list.end(), items.begin(), items.end());
          break;
        }
        case 'X': push(text(Kind::Str, uint_arg(4))); break;       // BINUNICODE
        case 0x8c: push(text(Kind::Str, uint_arg(1))); break;      // SHORT_BINUNICODE
        case 0x8d: push(text(Kind::Str, uint_arg(8))); break;      // BINUNICODE8
        case 'C': case 'U': push(text(Kind::Bytes, uint_arg(1))); break;  // SHORT_BIN{BYTES,STRING}
        case 'B': push(text(Kind::Bytes, uint_arg(4))); break;     // BINBYTES
        case 'T': {                                                // BINSTRING (signed length)
          const uint64_t len = uint_arg(4);
          if (len >> 31) error("BINSTRING with a negative length");
          push(text(Kind::Bytes, len));
          break;
        }
        case 'J': push(integer(static_cast<int32_t>(uint_arg(4)))); break;  // BININT
        case 'K': push(integer(static_cast<int64_t>(uint_arg(1)))); break;  // BININT1
        case 'M': push(integer(static_cast<int64_t>(uint_arg(2)))); break;  // BININT2
        case 0x8a: {                                       // LONG1: little-endian two's complement
          const uint64_t len = uint_arg(1);
          if (len > 8) error("integer wider than 64 bits");
          uint64_t v = len ? uint_arg(static_cast<int>(len)) : 0;
          if (len && len < 8 && (v >> (8 * len - 1)) & 1) v |= ~uint64_t{0} << (8 * len);
          push(integer(static_cast<int64_t>(v)));
          break;
        }
        case 'N': push(make(Kind::None)); break;           // NONE
        case 0x88: case 0x89: {                            // NEWTRUE, NEWFALSE
          Object* b = make(Kind::Bool);
          b->i = op == 0x88;
          push(b);
          break;
        }
        case 'G': {                                        // BINFLOAT: big-endian double
          const uint8_t* b = take(8);
          uint64_t bits = 0;
          for (int k = 0; k < 8; ++k) bits = (bits << 8) | b[k];
          Object* f = make(Kind::Float);
          std::memcpy(&f->f, &bits, sizeof bits);
          push(f);
          break;
        }
        case 'Q': push(persistent_load(pop())); break;     // BINPERSID
        case 'R': {                                        // REDUCE
          Object* args = pop();
          push(reduce(pop(), args));
          break;
        }
        case 'b':                                          // BUILD
          // The state (an OrderedDict's _metadata, a Parameter's __dict__) carries nothing
          // we need, so it is dropped; the object itself stays on the stack.
          pop();
          top();
          break;
        case '.': return pop();                            // STOP
        default: {
          static const char kHex[] = "0123456789abcdef";
          error(std::string("unsupported pickle opcode 0x") + kHex[op >> 4] + kHex[op & 15] +
                "; only the opcodes of a torch.save state dict are accepted");
        }
      }
    }
    error("pickle ends without STOP (truncated?)");
  }

  // Bytes before the first element of a tensor, and bytes spanned, checked against its
  // storage. `name` is the tensor's key, for messages.
  TensorRecord record(const Object* t, const std::string& name) const {
    const std::string what = "tensor " + quoted(name);
    const Object* s = t->storage;
    const uint64_t elem = core::dtype_size(s->dtype);
    TensorRecord r;
    r.name = name;
    r.dtype = s->dtype;
    for (const Object* d : t->size->items) r.shape.push_back(d->i);
    std::vector<int64_t> strides;
    for (const Object* d : t->stride->items) strides.push_back(d->i);
    if (t->i < 0) fail(file_, what + ": negative storage offset " + std::to_string(t->i));
    const uint64_t first = static_cast<uint64_t>(t->i);
    bool empty = false;
    for (size_t d = 0; d < r.shape.size(); ++d) {
      if (r.shape[d] < 0 || strides[d] < 0)
        fail(file_, what + ": negative size or stride in dimension " + std::to_string(d));
      empty |= r.shape[d] == 0;
    }
    if (empty) {  // an empty tensor reaches nothing; its offset must still be sane
      if (first > s->numel)
        fail(file_, what + ": storage offset " + std::to_string(first) +
                        " lies past its storage of " + std::to_string(s->numel) + " elements");
      r.offset = s->span.offset + first * elem;
      return r;
    }
    // The element count may exceed the storage (stride-0, expanded dimensions), but torch
    // needs it to fit an int64.
    uint64_t count = 1, reach = 0, last = 0;  // reach: elements from the first to the last
    bool too_many = false, overflow = false;
    for (size_t d = 0; d < r.shape.size(); ++d) {
      const uint64_t size = static_cast<uint64_t>(r.shape[d]);
      uint64_t step = 0;
      too_many |= __builtin_mul_overflow(count, size, &count) || count > INT64_MAX;
      overflow |= __builtin_mul_overflow(size - 1, static_cast<uint64_t>(strides[d]), &step);
      overflow |= __builtin_add_overflow(reach, step, &reach);
    }
    if (too_many) fail(file_, what + ": shape holds 2^63 elements or more");
    if (overflow || __builtin_add_overflow(first, reach, &last) || last >= s->numel)
      fail(file_, what + ": shape, strides and storage offset reach past its storage " +
                      quoted(s->s) + " of " + std::to_string(s->numel) + " elements");
    r.offset = s->span.offset + first * elem;  // <= the record's end: checked in persistent_load
    r.nbytes = (reach + 1) * elem;
    // Row-major with torch's rule that size-1 dimensions may have any stride; then the
    // strides say nothing the shape does not.
    int64_t expected = 1;
    for (size_t d = r.shape.size(); d-- > 0;) {
      if (r.shape[d] != 1 && strides[d] != expected) {
        r.strides = std::move(strides);
        break;
      }
      expected *= r.shape[d];  // no overflow: while strides match, this is <= reach + 1
    }
    return r;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    fail(file_, pkl_name_ + ", byte " + std::to_string(op_pos_) + ": " + what);
  }

  const uint8_t* take(uint64_t len) {
    if (len > n_ - pos_) error("pickle ends inside an opcode (truncated?)");
    const uint8_t* b = p_ + pos_;
    pos_ += len;
    return b;
  }
  uint64_t uint_arg(int len) { return read_le(take(len), len); }

  std::string line() {
    const uint8_t* start = p_ + pos_;
    const size_t avail = std::min<size_t>(n_ - pos_, kMaxGlobalName + 1);
    const void* nl = std::memchr(start, '\n', avail);
    if (!nl) error("GLOBAL name without a newline or longer than 256 bytes");
    const size_t len = static_cast<const uint8_t*>(nl) - start;
    pos_ += len + 1;
    return std::string(reinterpret_cast<const char*>(start), len);
  }

  Object* make(Kind k) {
    if (arena_.size() >= kMaxObjects) error("pickle builds too many objects");
    arena_.emplace_back();  // a deque never moves what it holds
    arena_.back().kind = k;
    return &arena_.back();
  }
  Object* integer(int64_t v) {
    Object* o = make(Kind::Int);
    o->i = v;
    return o;
  }
  Object* text(Kind k, uint64_t len) {
    const uint8_t* b = take(len);  // checked against the remaining bytes before any copy
    Object* o = make(k);
    o->s.assign(reinterpret_cast<const char*>(b), len);
    return o;
  }
  Object* tuple(std::vector<Object*> items) {
    Object* o = make(Kind::Tuple);
    o->items = std::move(items);
    return o;
  }

  // The stack, fenced by the innermost MARK as CPython's _pickle does it.
  size_t fence() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(Object* o) {
    if (stack_.size() >= kMaxStack) error("pickle stack too deep");
    stack_.push_back(o);
  }
  Object* top() const {
    if (stack_.size() <= fence()) error("pickle stack underflow");
    return stack_.back();
  }
  Object* pop() {
    Object* o = top();
    stack_.pop_back();
    return o;
  }
  std::vector<Object*> pop_mark() {
    if (marks_.empty()) error("MARK missing");
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<Object*> items(stack_.begin() + mark, stack_.end());
    stack_.resize(mark);
    return items;
  }
  Object* container(Kind k, const char* op) const {
    Object* o = top();
    if (o->kind != k)
      error(std::string(op) + " on " + kind_name(o->kind) + ", expected " + kind_name(k));
    return o;
  }

  void memo_put(uint64_t index) {
    if (index >= kMaxMemo) error("memo index " + std::to_string(index) + " too large");
    memo_[static_cast<uint32_t>(index)] = top();
  }
  Object* memo_get(uint64_t index) const {
    const auto it = memo_.find(static_cast<uint32_t>(index));
    if (index >= kMaxMemo || it == memo_.end())  // the cast is harmless: index is checked
      error("memo entry " + std::to_string(index) + " was never stored");
    return it->second;
  }

  // The allow-list: everything else a pickle could import is refused by name.
  Object* global(const std::string& module, const std::string& name) {
    Object* g = make(Kind::Global);
    if (module == "collections" && name == "OrderedDict") {
      g->callable = Callable::OrderedDict;
    } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
      g->callable = Callable::RebuildTensor;
    } else if (module == "torch._utils" && name == "_rebuild_parameter") {
      g->callable = Callable::RebuildParameter;
    } else if (module == "torch._utils" && name == "_rebuild_parameter_with_state") {
      g->callable = Callable::RebuildParameterWithState;
    } else {
      for (const StorageName& sn : kStorages) {
        if (module == "torch" && name == sn.name) {
          g->callable = Callable::StorageClass;
          g->dtype = sn.dtype;
          return g;
        }
      }
      error("pickle asks for global " + quoted(module + "." + name) +
            "; only tensors and containers are accepted");
    }
    return g;
  }

  // BINPERSID: torch.save's persistent_id is ('storage', <class>, key, location, numel).
  Object* persistent_load(const Object* pid) {
    const auto& a = pid->items;
    if (pid->kind != Kind::Tuple || a.size() != 5 || a[0]->kind != Kind::Str ||
        a[0]->s != "storage" || a[1]->kind != Kind::Global ||
        a[1]->callable != Callable::StorageClass || a[2]->kind != Kind::Str ||
        a[4]->kind != Kind::Int)
      error("persistent id is not ('storage', <storage class>, key, location, numel)");
    const std::string record = prefix_ + "/data/" + a[2]->s;
    if (!archive_.has(record))
      error("storage " + quoted(a[2]->s) + " has no record " + quoted(record) + " in the archive");
    Object* s = make(Kind::Storage);
    s->s = a[2]->s;
    s->dtype = a[1]->dtype;
    s->span = archive_.locate(record);
    const uint64_t elem = core::dtype_size(s->dtype);
    if (a[4]->i < 0 || static_cast<uint64_t>(a[4]->i) > s->span.size / elem)
      error("storage " + quoted(s->s) + " declares " + std::to_string(a[4]->i) +
            " elements of " + std::to_string(elem) + " bytes but its record holds " +
            std::to_string(s->span.size) + " bytes");
    s->numel = static_cast<uint64_t>(a[4]->i);
    return s;
  }

  Object* reduce(Object* callable, Object* args) {
    if (callable->kind != Kind::Global) error(std::string("REDUCE on ") + kind_name(callable->kind));
    if (args->kind != Kind::Tuple) error("REDUCE arguments are not a tuple");
    const auto& a = args->items;
    switch (callable->callable) {
      case Callable::OrderedDict:
        if (!a.empty()) error("OrderedDict() called with arguments");
        return make(Kind::Dict);
      case Callable::RebuildTensor: {
        // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
        //                    backward_hooks[, metadata]); the last ones do not matter here.
        if (a.size() != 6 && a.size() != 7) error("_rebuild_tensor_v2 takes 6 or 7 arguments");
        if (a[0]->kind != Kind::Storage || a[1]->kind != Kind::Int)
          error("_rebuild_tensor_v2 expects a storage and an integer offset");
        Object* t = make(Kind::Tensor);
        t->storage = a[0];
        t->i = a[1]->i;
        t->size = int_tuple(a[2], "size");
        t->stride = int_tuple(a[3], "stride");
        if (t->size->items.size() != t->stride->items.size())
          error("_rebuild_tensor_v2: size and stride have different lengths");
        return t;
      }
      case Callable::RebuildParameter:
      case Callable::RebuildParameterWithState: {
        // (tensor, requires_grad, backward_hooks[, state]): the parameter is its tensor.
        const size_t want = callable->callable == Callable::RebuildParameter ? 3 : 4;
        if (a.size() != want || a[0]->kind != Kind::Tensor)
          error("_rebuild_parameter expects a tensor and " + std::to_string(want - 1) +
                " more arguments");
        return a[0];
      }
      case Callable::StorageClass:
        break;
    }
    error("a storage class is called directly; only torch.save's persistent ids are accepted");
  }

  const Object* int_tuple(const Object* o, const char* what) const {
    if (o->kind != Kind::Tuple || o->items.size() > kMaxDims)
      error(std::string("_rebuild_tensor_v2: ") + what + " is not a tuple of at most 64 ints");
    for (const Object* x : o->items)
      if (x->kind != Kind::Int)
        error(std::string("_rebuild_tensor_v2: ") + what + " holds " + kind_name(x->kind));
    return o;
  }

  const uint8_t* p_;
  uint64_t n_;
  uint64_t pos_ = 0, op_pos_ = 0;
  const std::string& pkl_name_;
  const std::string& prefix_;
  const Archive& archive_;
  const std::string& file_;
  std::deque<Object> arena_;
  std::vector<Object*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint32_t, Object*> memo_;
};

// ---------------------------------------------------------------------------------------
// Flattening the state dict

struct Flattener {
  const Unpickler& unpickler;
  const std::string& file;
  ParsedCheckpoint out;
  std::unordered_set<std::string> seen;
  size_t visits = 0, name_bytes = 0;

  // {'model': {'a.weight': t}} -> 'model.a.weight'. Values that are neither tensors nor dicts
  // (ints, strings, lists: training state saved alongside) are skipped.
  void walk(const Object* dict, const std::string& prefix, int depth) {
    const std::string where = prefix.empty() ? "at the top level"
                                             : "under " + quoted(prefix.substr(0, prefix.size() - 1));
    if (depth > kMaxDepth)
      fail(file, "dicts nested deeper than " + std::to_string(kMaxDepth) + " levels " + where);
    for (size_t k = 0; k + 1 < dict->items.size(); k += 2) {
      const Object* key = dict->items[k];
      const Object* value = dict->items[k + 1];
      if (key->kind != Kind::Str)
        fail(file, std::string("a key is ") + kind_name(key->kind) + " " + where +
                       "; only string keys are accepted");
      if (++visits > kMaxVisits) fail(file, "state dict has too many entries");
      if (value->kind != Kind::Tensor && value->kind != Kind::Dict) continue;
      std::string name = prefix + key->s;
      name_bytes += name.size();
      if (name.size() > kMaxNameBytes || name_bytes > kMaxTotalNameBytes)
        fail(file, "tensor names too long near " + quoted(name));
      if (value->kind == Kind::Dict) {
        walk(value, name + ".", depth + 1);
        continue;
      }
      if (!seen.insert(name).second) fail(file, "tensor name " + quoted(name) + " appears twice");
      if (out.tensors.size() >= kMaxTensors) fail(file, "state dict has too many tensors");
      out.tensors.push_back(unpickler.record(value, name));
    }
  }
};

// The archive's one `<folder>/data.pkl`; the folder name is whatever torch.save chose
// (the file's stem in 1.x, 'archive' in 2.x).
std::string find_prefix(const Archive& archive, const std::string& file) {
  std::string prefix;
  const std::string suffix = "/data.pkl";
  for (const std::string& name : archive.names()) {
    if (name.size() <= suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0 ||
        name.find('/') != name.size() - suffix.size())
      continue;
    if (!prefix.empty())
      fail(file, "archive holds more than one data.pkl (" + quoted(prefix + suffix) + ", " +
                     quoted(name) + ")");
    prefix = name.substr(0, name.size() - suffix.size());
  }
  if (prefix.empty()) fail(file, "zip archive has no '<folder>/data.pkl'; not a torch.save file");
  return prefix;
}

}  // namespace

ParsedCheckpoint parse_torch_zip(const uint8_t* data, size_t size, const std::string& file) {
  const Archive archive(data, size, file);
  const std::string prefix = find_prefix(archive, file);
  // torch >= 2.1 records the writer's byte order; all our readers assume little-endian.
  if (archive.has(prefix + "/byteorder")) {
    const Span bo = archive.locate(prefix + "/byteorder");
    if (bo.size != 6 || std::memcmp(data + bo.offset, "little", 6) != 0)
      fail(file, "tensors were saved big-endian; re-save the checkpoint on a little-endian machine");
  }
  const std::string pkl_name = prefix + "/data.pkl";
  Unpickler unpickler(data, archive.locate(pkl_name), pkl_name, prefix, archive, file);
  const Object* root = unpickler.run();
  if (root->kind != Kind::Dict)
    fail(file, std::string("top-level object is ") + kind_name(root->kind) +
                   ", expected a dict of tensors (a state dict)");
  Flattener flat{unpickler, file, {}, {}, 0, 0};
  flat.walk(root, "", 0);
  return std::move(flat.out);
}

}  // namespace wan::io
