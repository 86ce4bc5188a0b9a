// Training data: records read from files, tokenized into fixed-length
// examples with a loss mask, split into train/eval, partitioned across
// workers, and batched.
//
// Formats (DataOptions::format, "auto" picks by extension and content):
//   text        a plain text file; one record per paragraph (blank-line
//               separated; long paragraphs cut at line ends near 4 KiB)
//   shakespeare tiny-shakespeare: speeches ("NAME:" line, then its lines up
//               to a blank line), each a record with field "speaker"
//   jsonl       one JSON object per line: {"text": ...} or instruction
//               records {"instruction","input","output"},
//               {"instruction","context","response"}, {"question","answer"},
//               or a conversation {"messages": [{"role","content"}, ...]}
//               (roles system, user, assistant; multi-turn)
//   json        a JSON array of such objects (alpaca)
// Instruction, question and messages records are laid out by
// DataOptions::chat_template (data/chat_template.h); the loss counts only
// assistant tokens (targets of all other tokens are -100).
//   alpaca (also "none"; what "auto" means when the tokenizer has no
//   chat_template): a prompt and a response, the prompt being Alpaca's
//   template without its preamble:
//   "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
//   (the Input block is omitted when input/context is empty; a question is
//   the instruction), and the response is output/response/answer followed
//   by EOS at tokenization. Messages records need a chat template.
//   a chat template (chatml, qwen3, llama3, ...): the record becomes a
//   conversation (user: instruction, plus "\n\n" and the input when there
//   is one, or the question; assistant: the output/response/answer), laid
//   out as the model's template renders it for training, held as
//   Record::segments; the trained tokens are each assistant turn's content
//   and its end-of-turn token; the template writes BOS where it has one and
//   no EOS is added.
// Other scalar fields of a JSON record (e.g. "category") are kept in
// Record::fields for partitioning.
//
// Thread-safety: free functions; results are values.
#ifndef FEDPEFT_DATA_DATASET_H_
#define FEDPEFT_DATA_DATASET_H_

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/status.h"
#include "data/chat_template.h"
#include "model/tokenizer.h"

namespace fedpeft {
namespace data {

// A record is either prompt + response (plain text, Alpaca layout: BOS and
// EOS are added at tokenization) or, when `segments` is non-empty, a
// conversation rendered by a chat template (prompt/response empty; the
// segments' concatenation is the rendered text, BOS and end-of-turn tokens
// included).
struct Record {
  std::string prompt;    // no loss on these tokens (empty for plain text)
  std::string response;  // loss on these tokens (the whole text for text)
  std::vector<Segment> segments;  // chat layout; loss where Segment::trains
  ChatFamily chat = ChatFamily::kAlpaca;  // the template that wrote segments
  std::map<std::string, std::string> fields;  // e.g. "speaker", "category"
};

struct DataOptions {
  std::string path;              // file to read (required)
  std::string format = "auto";   // auto | text | shakespeare | jsonl | json
  int max_seq_len = 128;         // tokens per example
  std::string packing = "pack";  // pack (concatenate + window) | truncate
  double eval_fraction = 0.1;    // held-out share of records
  uint64_t seed = 1234;          // shuffling and splits
  int64_t max_records = 0;       // 0 = all; cap for quick runs
  // Partitioning for federated runs (shard i of n):
  std::string partition = "iid";            // iid | field | dirichlet
  std::string partition_field = "speaker";  // field for field / dirichlet
  double dirichlet_alpha = 0.5;
  // Layout of instruction/question/messages records: auto (the template in
  // tokenizer_config.json beside the tokenizer, alpaca when it has none;
  // resolved by ResolveChatTemplate) or a name of ChatTemplateNames()
  // (none = alpaca, chatml, qwen2.5, qwen3, smollm2, llama3, llama3.1,
  // llama2, mistral, gemma, phi3).
  std::string chat_template = "auto";

  void Read(ConfigReader& in);  // binds keys of a "data" section
};

// Replaces options->chat_template "auto" by the family of the chat_template
// in tokenizer_config.json beside the tokenizer (the folder of
// `tokenizer_path`, or `model_path` itself or its folder when
// `tokenizer_path` is empty); "alpaca" when there is no such file or it has
// no chat_template. Then checks that `tokenizer` has the chosen template's
// special tokens. Errors name the file, the template excerpt and the
// choices. Call before LoadRecords/Tokenize; LoadRecords and Tokenize read
// an unresolved "auto" as alpaca.
Status ResolveChatTemplate(const std::string& model_path,
                           const std::string& tokenizer_path,
                           const model::Tokenizer& tokenizer,
                           DataOptions* options);

// The alpaca prompt of an instruction record (what "alpaca" lays out and
// trains the response after): "### Instruction:\n{instruction}\n\n"
// ["### Input:\n{input}\n\n"] "### Response:\n".
std::string InstructionPrompt(const std::string& instruction,
                              const std::string& input);

// Largest data file LoadRecords reads. The file, its records and their
// tokens are all held in memory (a JSON array's parse tree alone is several
// times the file), about ten times the file in all; Alpaca is 22 MB,
// tiny-shakespeare 1 MB. A larger corpus is split into one file per worker.
inline constexpr uint64_t kMaxDataFileBytes = 1ull << 30;

// Reads records; errors name the file and line ("line 17: expected a JSON
// object with 'text' or 'instruction'/'output'"). A file larger than
// kMaxDataFileBytes is refused unread, naming its size and the limit.
StatusOr<std::vector<Record>> LoadRecords(const DataOptions& options);

// One training example: tokens [T] and next-token targets [T] with -100
// where no loss is taken (prompt tokens, padding).
struct Example {
  std::vector<int64_t> tokens;
  std::vector<int64_t> targets;
};

// Tokenizes records into examples of at most max_seq_len tokens. Every
// record becomes BOS, prompt, response, EOS (a chat record: its segments
// through EncodeSegments with the special tokens of Record::chat);
// targets are the next token, -100 where the next token is a prompt token
// or a record's BOS.
// packing "pack" concatenates the records and cuts the stream into windows
// of max_seq_len tokens (each window reads max_seq_len + 1 stream tokens,
// the last one only as a target; only the final window may be shorter, and
// only the first one necessarily starts with BOS); "truncate" keeps one
// example per record, BOS first, cut to max_seq_len. Examples are never
// empty; windows/records with no target token (e.g. a prompt longer than
// max_seq_len) are dropped.
std::vector<Example> Tokenize(const std::vector<Record>& records,
                              const model::Tokenizer& tokenizer,
                              const DataOptions& options);

// A permutation of 0..n-1: Fisher-Yates over std::mt19937_64(seed) with its
// own bounded draw, so the order is the same with every standard library.
std::vector<size_t> ShuffledIndices(size_t n, uint64_t seed);

// Deterministic shuffle by seed (ShuffledIndices), then the last eval_fraction
// of records (at least one when there are two or more and eval_fraction > 0,
// and never all of them) is the eval split. REQUIRES: train, eval non-null.
void SplitTrainEval(const std::vector<Record>& records, double eval_fraction,
                    uint64_t seed, std::vector<Record>* train,
                    std::vector<Record>* eval);

// Which of `n` records SplitTrainEval(records, eval_fraction, seed) puts in
// the eval split (mask[i] for record i). A worker that partitions the file
// holds out exactly the records of its shard that are held out here, so the
// union of every worker's eval split is the whole file's eval split (what
// the coordinator and the centralized baseline evaluate on), and no record
// a worker trains on is in any eval split.
std::vector<bool> HeldOutMask(size_t n, double eval_fraction, uint64_t seed);

// Assigns records to `n` shards. iid: shuffled round robin. field: every
// distinct value of `field` goes whole to one shard (largest groups first
// to the least-loaded shard, so shards are non-IID but balanced in size).
// dirichlet: per field value, shard proportions ~ Dirichlet(alpha).
// Deterministic for `seed`. Returns shard -> record indices (ascending in
// each shard); errors if a record lacks the field, n < 1 or the method is
// unknown. A shard may be empty (fewer records or field values than
// shards, or a small alpha); callers check their own shard.
StatusOr<std::vector<std::vector<size_t>>> Partition(
    const std::vector<Record>& records, int n, const std::string& method,
    const std::string& field, double alpha, uint64_t seed);

// Parses "i/n" (0 <= i < n) as written in data.shard.
StatusOr<std::pair<int, int>> ParseShard(const std::string& spec);

struct Batch {
  torch::Tensor tokens;   // [B, T] int64, padded with 0
  torch::Tensor targets;  // [B, T] int64, -100 where ignored
  int64_t num_target_tokens = 0;
};

// Builds batches of `batch_size` from examples in the given order
// (the last one may be smaller), each padded to its longest example.
// REQUIRES: batch_size >= 1, every index in `order` < examples.size().
std::vector<Batch> MakeBatches(const std::vector<Example>& examples,
                               const std::vector<size_t>& order,
                               int batch_size);

}  // namespace data
}  // namespace fedpeft

#endif  // FEDPEFT_DATA_DATASET_H_
