package usersignals.flink;

import java.nio.charset.StandardCharsets;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.types.Row;
import org.apache.kafka.clients.producer.ProducerRecord;

/**
 * Writes a rejected record to the dead-letter topic: the original key and value
 * bytes untouched, the reason code and detail as headers, plus where it came from.
 * Expects rows (key, value, reason, detail, source_topic, partition, offset).
 */
public class DeadLetterSerializer implements KafkaRecordSerializationSchema<Row> {
    private static final long serialVersionUID = 1L;
    private final String topic;

    public DeadLetterSerializer(String topic) {
        this.topic = topic;
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(Row row, KafkaSinkContext context, Long timestamp) {
        byte[] key = (byte[]) row.getField(0);
        byte[] value = (byte[]) row.getField(1);
        ProducerRecord<byte[], byte[]> record = new ProducerRecord<>(topic, null, timestamp, key, value);
        record.headers().add("dlq.reason", utf8(row.getField(2)));
        record.headers().add("dlq.detail", utf8(row.getField(3)));
        record.headers().add("dlq.source.topic", utf8(row.getField(4)));
        record.headers().add("dlq.source.partition", utf8(row.getField(5)));
        record.headers().add("dlq.source.offset", utf8(row.getField(6)));
        return record;
    }

    private static byte[] utf8(Object o) {
        return String.valueOf(o).getBytes(StandardCharsets.UTF_8);
    }
}
