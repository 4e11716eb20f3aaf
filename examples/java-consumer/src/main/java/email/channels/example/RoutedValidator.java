package email.channels.example;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.networknt.schema.JsonSchema;
import com.networknt.schema.JsonSchemaFactory;
import com.networknt.schema.SpecVersion;
import com.networknt.schema.ValidationMessage;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Reads a topic from the beginning (read_committed, as campaign services must) and validates
 * every record value against a JSON Schema file. Prints one line per invalid record and a
 * summary line {@code validated=N invalid=M campaign_header_mismatch=K}; exits 0 only when at
 * least the expected number of records arrived within the time limit and every one was valid.
 *
 * <p>Usage: {@code java -jar routed-validator.jar BOOTSTRAP TOPIC SCHEMA_FILE MIN_RECORDS TIMEOUT_S}
 */
public final class RoutedValidator {
  private static final String CAMPAIGN_HEADER = "campaign-id";

  private RoutedValidator() {}

  public static void main(String[] args) throws Exception {
    if (args.length != 5) {
      System.err.println("usage: BOOTSTRAP TOPIC SCHEMA_FILE MIN_RECORDS TIMEOUT_S");
      System.exit(2);
    }
    String bootstrap = args[0];
    String topic = args[1];
    Path schemaFile = Path.of(args[2]);
    int minRecords = Integer.parseInt(args[3]);
    Instant deadline = Instant.now().plusSeconds(Long.parseLong(args[4]));

    ObjectMapper mapper = new ObjectMapper();
    JsonSchema schema =
        JsonSchemaFactory.getInstance(SpecVersion.VersionFlag.V202012)
            .getSchema(schemaFile.toAbsolutePath().toUri());

    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(ConsumerConfig.GROUP_ID_CONFIG, "java-validator-" + UUID.randomUUID());
    props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    props.put(
        ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());

    int validated = 0;
    int invalid = 0;
    int headerMismatch = 0;
    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
      consumer.subscribe(List.of(topic));
      while (validated < minRecords && Instant.now().isBefore(deadline)) {
        ConsumerRecords<byte[], byte[]> records = consumer.poll(Duration.ofMillis(500));
        for (ConsumerRecord<byte[], byte[]> record : records) {
          validated++;
          JsonNode value = mapper.readTree(record.value());
          Set<ValidationMessage> errors = schema.validate(value);
          if (!errors.isEmpty()) {
            invalid++;
            System.out.println("INVALID offset=" + record.offset() + " " + errors);
          }
          Header campaign = record.headers().lastHeader(CAMPAIGN_HEADER);
          String expected = value.path("campaign_id").asText(null);
          String actual =
              campaign == null ? null : new String(campaign.value(), StandardCharsets.UTF_8);
          if (expected == null || !expected.equals(actual)) {
            headerMismatch++;
            System.out.println(
                "HEADER offset=" + record.offset() + " header=" + actual + " body=" + expected);
          }
        }
      }
    }
    System.out.println(
        "validated=" + validated + " invalid=" + invalid
            + " campaign_header_mismatch=" + headerMismatch);
    boolean ok = validated >= minRecords && invalid == 0 && headerMismatch == 0;
    System.exit(ok ? 0 : 1);
  }
}
