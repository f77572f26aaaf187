// Service Bus namespace (Standard: the cheapest tier with topics) with the `completions` topic the async path
// publishes to. Duplicate detection is on, so a completion re-sent with the same message_id (the orchestration
// instance id) inside the window is dropped: effectively-once delivery. SAS (local) auth is disabled.

@description('Name of the Service Bus namespace (globally unique).')
@minLength(6)
@maxLength(50)
param name string

@description('Azure region.')
param location string

@description('Tags applied to the namespace.')
param tags object = {}

@description('Topic the gateway publishes completions to (GATEWAY_COMPLETIONS_ENTITY).')
param topicName string = 'completions'

@description('Subscription created on the topic so completions are kept until a consumer reads them.')
param subscriptionName string = 'default'

@description('Duplicate detection window (ISO 8601). Must exceed the longest time an activity may retry a publish.')
param duplicateDetectionWindow string = 'PT1H'

@description('How long a completion stays in the subscription if nobody reads it (ISO 8601).')
param messageTimeToLive string = 'P1D'

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }

  resource topic 'topics' = {
    name: topicName
    properties: {
      requiresDuplicateDetection: true
      duplicateDetectionHistoryTimeWindow: duplicateDetectionWindow
      defaultMessageTimeToLive: messageTimeToLive
      enableBatchedOperations: true
      supportOrdering: false
    }

    resource subscription 'subscriptions' = {
      name: subscriptionName
      properties: {
        maxDeliveryCount: 10
        lockDuration: 'PT1M'
        deadLetteringOnMessageExpiration: true
        defaultMessageTimeToLive: messageTimeToLive
      }
    }
  }
}

@description('Name of the namespace.')
output name string = namespace.name

@description('Fully qualified namespace (COMPLETIONS_SERVICEBUS__fullyQualifiedNamespace).')
output fullyQualifiedNamespace string = replace(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':443/', '')

@description('Name of the completions topic.')
output topicName string = namespace::topic.name

@description('Name of the default subscription on the topic.')
output subscriptionName string = namespace::topic::subscription.name
